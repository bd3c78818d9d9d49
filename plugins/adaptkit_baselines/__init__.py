"""First-party baselines trained without pretraining, registered like any third party's.

- ``ngram_linear`` (sequence classification, pairs and multi-label included): TF-IDF of word
  1-2-grams and character 2-5-grams, logistic regression with its regularisation ``C`` chosen by
  stratified 5-fold cross-validation on the arm's own rows. A second's work that scores 0.58 /
  0.67 / 0.73 on 100 / 300 / 1,000 SST-2 rows: what a practitioner ships when a transformer does
  not clearly beat it.
- ``ngram_ridge`` (regression): the same n-gram TF-IDF, ridge regression with ``alpha`` chosen by
  5-fold cross-validation on the verdict's metric.
- ``pixel_linear`` (image classification): the task's own preprocessed pixels averaged down to
  8 x 8 per channel, standardised, logistic regression with ``C`` chosen the same way.

scikit-learn does the work (vectorisers, ``GridSearchCV``, ``LogisticRegression``); this module
only turns the task's rows into its inputs and its outputs back into the task's logit layout.
"""
from __future__ import annotations

from adaptkit import hookimpl
from adaptkit_baselines.ngrams import BagOfNgrams
from adaptkit_baselines.pixels import DownsampledPixels
from adaptkit_baselines.ridge import NgramRidge


@hookimpl
def adaptkit_register_baselines(register):
    register(BagOfNgrams)
    register(DownsampledPixels)
    register(NgramRidge)
