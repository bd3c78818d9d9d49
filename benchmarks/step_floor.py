"""How many optimizer steps does a pretrained model need to learn from 100 rows? (the default training.min_steps)

Dev accuracy of the quick start (MiniLM, SST-2) on 100 training rows, batch 16, against an exact
number of optimizer steps (training.max_steps), for each STRATEGY:LR:STEPS given:

    python benchmarks/step_floor.py lora:1e-3:25 lora:1e-3:50 lora:1e-3:100 full:3e-5:100

Accuracy does not depend on machine load, so this may share the machine; its seconds do.
Results: benchmarks/results/step_floor.md (by hand from the printed lines).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import adaptkit

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    base = adaptkit.load_recipe(ROOT / "recipes" / "quickstart.yaml").resolved_dict()
    for spec in sys.argv[1:]:
        name, rate, steps = spec.split(":")
        recipe = json.loads(json.dumps(base))
        if name != base["strategy"]["name"]:
            recipe["strategy"] = {"name": name}
        recipe["data"]["max_train_samples"] = 100
        recipe["training"].update(max_steps=int(steps), batch_size=16, learning_rate=float(rate),
                                  checkpoint_every_steps=0)
        recipe["output"].update(dir=str(Path(tempfile.mkdtemp()) / "run"), verify_export=False)
        started = time.perf_counter()
        result = adaptkit.run(recipe, progress=False)
        print(json.dumps({"strategy": name, "learning_rate": float(rate), "steps": int(steps),
                          "dev_accuracy": round(result.metrics["eval"]["accuracy"], 4),
                          "seconds": round(time.perf_counter() - started)}), flush=True)
        shutil.rmtree(Path(recipe["output"]["dir"]).parent, ignore_errors=True)


if __name__ == "__main__":
    main()
