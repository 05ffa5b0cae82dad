"""
What a run reports while it trains: a progress line every N steps on the terminal and a JSON line in
runs/<name>/log.jsonl (Logger), and the log read back as curves (read_log). Not from the paper.
"""

import json
import os
import time

from machine import UserError


class Logger:
    def __init__(self, run_dir, stage, total, start, rank):
        self.path, self.stage, self.total, self.rank = os.path.join(run_dir, "log.jsonl"), stage, total, rank
        self.t0, self.step0 = time.time(), start  # it/s counts from the start step

    def log(self, step, metrics_, line=True):
        """Append the terms, time and speed as one JSON line; print `stage step/total | it/s | ETA |
        terms` unless line=False. Rank 0 alone writes."""
        if self.rank != 0:
            return
        elapsed = time.time() - self.t0
        its = (step - self.step0) / max(elapsed, 1e-9)
        record = {"stage": self.stage, "step": step, "time": round(elapsed, 2), "it_s": round(its, 3), **metrics_}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if line:
            eta = (self.total - step) / max(its, 1e-9)  # seconds left at the current speed
            # floats to 4 significant digits; strings (the collapse WARNING) and bools as they are
            terms = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics_.items())
            print(f"{self.stage} {step}/{self.total} | {its:.2f} it/s | ETA {fmt_time(eta)} | {terms}", flush=True)


def fmt_time(seconds):
    """e.g. 1h05m above an hour, else 4m07s."""
    seconds = int(seconds)
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


def read_log(path):
    """log.jsonl (or a run folder holding one) -> {key: (steps, values)} for every numeric key."""
    if os.path.isdir(path):
        path = os.path.join(path, "log.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such log file")
    series = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            for k, v in record.items():
                # bookkeeping is not a curve; bools are ints in Python, but flags
                if k in ("step", "time", "it_s") or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                # a resumed run logs some steps twice: the later value wins
                series.setdefault(k, {})[record.get("step", 0)] = v
    return {k: (sorted(d), [d[s] for s in sorted(d)]) for k, d in series.items()}
