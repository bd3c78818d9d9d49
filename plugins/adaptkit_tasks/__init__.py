"""First-party task types, registered through the ``adaptkit`` entry point like any plugin."""
from __future__ import annotations

from adaptkit import hookimpl
from adaptkit_tasks.causal_lm import CausalLM
from adaptkit_tasks.image_classification import ImageClassification
from adaptkit_tasks.image_to_text import ImageToText
from adaptkit_tasks.instruct import Instruct
from adaptkit_tasks.preference import Preference
from adaptkit_tasks.question_answering import QuestionAnswering
from adaptkit_tasks.regression import Regression
from adaptkit_tasks.reward import Reward
from adaptkit_tasks.seq2seq import Seq2Seq
from adaptkit_tasks.sequence_classification import SequenceClassification
from adaptkit_tasks.token_classification import TokenClassification


@hookimpl
def adaptkit_register_tasks(register):
    register(SequenceClassification)
    register(CausalLM)
    register(TokenClassification)
    register(ImageClassification)
    register(ImageToText)
    register(Instruct)
    register(Preference)
    register(Reward)
    register(Regression)
    register(QuestionAnswering)
    register(Seq2Seq)
