#!/bin/sh
# Rebuild the shipped tiny models in pretrained/: the default `tiny` runs of every stage, trained
# into runs/pretrained-build (your own runs/ stay as they are), then exported with their final
# weights only, fp16 where the tokens do not depend on them (python runs.py export; the classifier
# stays fp32: it is the semantic network that `tiny` reads). The tokenizer stages read the
# classifier trained here, which is then shipped: a default run that reads the shipped classifier
# is the same run. About 20 minutes on a 2-core CPU with native bf16 (README, "Train it yourself").
# tests/test_pretrained.py checks the result.
set -e
R=runs/pretrained-build
python train.py --stage classifier --runs-dir $R
python train.py --stage tokenizer --runs-dir $R --classifier-ckpt $R/tiny-classifier
python train.py --stage decoder --runs-dir $R --classifier-ckpt $R/tiny-classifier
python train.py --stage ar --runs-dir $R
python train.py --stage nar --runs-dir $R
python runs.py export $R/tiny-classifier $R/tiny-tokenizer $R/tiny-decoder $R/tiny-ar $R/tiny-nar --out pretrained
