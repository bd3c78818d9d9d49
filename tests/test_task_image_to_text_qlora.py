"""QLoRA on a captioner: the ViT + GPT-2 of test_task_image_to_text, saved as a checkpoint, loads in
4-bit (bitsandbytes on the CPU), trains LoRA on both sides, keeps the contract, and its adapter loads
with plain transformers + bitsandbytes + peft and computes what adaptkit's own reload computes.

What stays in full precision and why: GPT-2's ``lm_head`` (tied to the token embedding: quantizing
one copy would untie the other), the ViT's patch embedding (a ``Conv2d``: bitsandbytes has no 4-bit
convolution), and every norm and position table (no matmul to quantize).
"""
from __future__ import annotations

import pytest
import torch

from test_task_image_to_text import COLOURS, SHAPES, caption_table, recipe

bnb = pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Captions, a word tokenizer and a tiny captioner saved with save_pretrained: the "pretrained" base."""
    from types import SimpleNamespace

    from adaptkit import load_config
    from adaptkit.testing import word_tokenizer
    from adaptkit_tasks.image_to_text import ImageToText

    folder = tmp_path_factory.mktemp("qlora-captions")
    data = {"folder": folder, "train": caption_table(folder, "train", 24, 1),
            "eval": caption_table(folder, "eval", 8, 2),
            "tokenizer": word_tokenizer([{"caption": f"there is a the picture shows {' '.join(COLOURS)} "
                                                     f"{' '.join(SHAPES)}"}], folder / "tokenizer")}
    config = recipe(data, folder)["model"]["config"]
    section = SimpleNamespace(name=None, tokenizer=str(data["tokenizer"]), revision=None, trust_remote_code=False,
                              allow_pickle=False, config=config)
    task = ImageToText({"image_folder": str(folder)})
    task.load_processor(SimpleNamespace(model=section), None)
    torch.manual_seed(0)
    task.build_model("", load_config(SimpleNamespace(model=section), None), True).save_pretrained(folder / "base")
    return data


@pytest.mark.slow
def test_qlora_trains_a_captioner_and_its_adapter_loads_with_peft(checkpoint, tmp_path):
    from peft import PeftModel
    from PIL import Image
    from transformers import BitsAndBytesConfig, VisionEncoderDecoderModel, VisionTextDualEncoderProcessor

    import adaptkit
    from adaptkit.plugin.contract import model_outputs

    chosen = recipe(checkpoint, tmp_path, "qlora", max_steps=3)
    chosen["model"] = {"name": str(checkpoint["folder"] / "base"), "tokenizer": str(checkpoint["tokenizer"])}
    chosen["strategy"]["quantize_embeddings"] = False  # as transformers' own 4-bit loading: embeddings stay float
    result = adaptkit.run(chosen, progress=False)
    contract = " | ".join(result.metrics["contract"])
    for rule in ("frozen:", "export:", "signature:", "equivalence:"):
        assert rule in contract, contract
    assert {"bleu", "cider", "token_loss"} <= set(result.eval)

    # the adapter on a base that plain transformers loads in 4-bit, the tied lm_head skipped
    quantized = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])
    base = VisionEncoderDecoderModel.from_pretrained(checkpoint["folder"] / "base", quantization_config=quantized)
    plain = PeftModel.from_pretrained(base, result.output_dir / "adapter").eval()
    for module in plain.modules():  # as adaptkit's quantization does: bitsandbytes' CPU repack for its
        if isinstance(module, bnb.nn.Linear4bit):  # AVX512-bf16 kernel rounds the scales to bf16 (~1e-4 apart)
            module.support_avx512bf16_for_cpu = False
    layers = [name for name, module in plain.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert any(".encoder.layers." in n for n in layers) and any(".decoder.transformer.h." in n for n in layers)
    assert not isinstance(plain.get_base_model().decoder.lm_head, bnb.nn.Linear4bit)
    assert any("lora_A" in name for name, _ in plain.named_parameters())

    images = [str(checkpoint["folder"] / f"eval-{i}.png") for i in range(4)]
    processor = VisionTextDualEncoderProcessor.from_pretrained(result.output_dir / "tokenizer")
    pixels = processor.image_processor([Image.open(p).convert("RGB") for p in images],
                                       return_tensors="pt")["pixel_values"]
    predictor = adaptkit.load(result.output_dir)
    written = predictor.predict([{"image": path} for path in images])
    start = processor.tokenizer.bos_token_id
    batch = {"pixel_values": pixels, "decoder_input_ids": torch.full((len(images), 3), start)}
    assert torch.allclose(model_outputs(plain, batch), model_outputs(predictor.model, batch), atol=1e-5)
    with torch.no_grad():  # the adapter folder has no generation_config: the task's settings by hand
        ids = plain.generate(pixel_values=pixels, max_new_tokens=8, num_beams=1, do_sample=False)
    assert [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)] == written
