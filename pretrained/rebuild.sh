#!/bin/sh
# Rebuild the shipped tiny models in pretrained/: the default `tiny` runs of every stage, trained
# into runs/pretrained-build (your own runs/ stay as they are), then exported with their final
# weights only, fp16 where the tokens do not depend on them (python runs.py export).
# About 25 minutes on a 2-core laptop CPU. tests/test_pretrained.py checks the result.
set -e
R=runs/pretrained-build
python train.py --stage tokenizer --runs-dir $R   # trains the semantic classifier first
python train.py --stage decoder --runs-dir $R
python train.py --stage ar --runs-dir $R
python train.py --stage nar --runs-dir $R
python runs.py export $R/tiny-classifier $R/tiny-tokenizer $R/tiny-decoder $R/tiny-ar $R/tiny-nar --out pretrained
