#!/bin/sh
# For maintainers: remake the README's pictures in assets/ from the runs they show (the README's
# own commands write into runs/, never here). Needs the shipped models (pretrained/), the default
# tokenizer run's log in runs/pretrained-build/tiny-tokenizer (sh pretrained/rebuild.sh) and the reproduction
# study's runs in runs/study/ (python study.py).
set -e
python visualize.py --recon pretrained/tiny-tokenizer pretrained/tiny-decoder --names "phase 1 (alpha 1)" "phase 2 (alpha 0)" \
    --out assets/recon_phases.png
python sample.py --ckpt pretrained/tiny-ar --classes 0 9 18 27 4 13 22 31 --cfg-scale 3 --out assets/samples_ar.png
python sample.py --ckpt pretrained/tiny-nar --classes 0 9 18 27 4 13 22 31 --cfg-scale 3 --out assets/samples_nar.png
python visualize.py --curves assets/logs/tiny-tokenizer-vqgan-d-8eaa7e5.jsonl runs/pretrained-build/tiny-tokenizer --keys d g lam \
    --out assets/gan_curves.png
python visualize.py --usage runs/study/a0-s0 runs/study/a0-noent-s0 --names "with -gamma*H (default)" \
    "--entropy-weight 0" --out assets/usage_entropy.png
python visualize.py --pairs runs/study/ar-a0-s0 runs/study/ar-a1-s0 --names "alpha=0" "alpha=1" \
    --out assets/gt_context_alpha0_vs_alpha1.png
