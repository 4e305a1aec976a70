"""REPA and VA-VAE at small scale: does aligning a diffusion transformer's hidden tokens with a frozen
self-supervised encoder make it train faster, on 8×8 digits?

Yu et al. 2024 (REPA) report that aligning block 8 of SiT-XL/2 with DINOv2 patch features reaches
the baseline's FID at 7M steps in 400K steps (17.5× faster). Yao et al. 2025 (VA-VAE) report that
aligning a VAE's latent with a foundation model (mcos + mdms, adaptive weight) makes the latent
space easier to diffuse (better FID at the same training).

Here, at digit scale:

* data: scikit-learn's 1,797 digits, the library's stratified split (seed 0): 1,257 train / 180 val /
  360 test. Everything trains on the training split; the metric is computed against the test split.
* metric: :class:`alignkit.metrics.GenerationJudge` — FD in a separately trained digit classifier's
  64-d features (its test accuracy is printed), its accuracy on class-conditional samples, and
  precision/recall (k = 3). 360 samples (one per test image, with that image's label), Heun sampler.
* target encoder: :class:`alignkit.models.PatchEncoder` trained by SimCLR on the training images
  without labels (4×4 grid of 64-d patch tokens = SiT's 16 tokens), cached.
* diffusion: :class:`alignkit.models.SiT` (patch 2 → 16 tokens), flow matching, AdamW, batch 64,
  classifier-free-guidance training (10 % null class), evaluated with CFG scale 1 (plain conditional).
* REPA: :class:`alignkit.models.REPARegularizer` on ``blocks.{depth−1}``, projector Linear-SiLU-
  Linear-SiLU-Linear (hidden 256), λ·(−cos).
* VA-VAE: :class:`alignkit.models.DigitVAE` (4×4×4 latent) trained with and without the VF loss, then
  the same SiT (patch 1 on the 4×4 latent) on each latent space; samples decoded and judged alike.

    python experiments/repa_digits.py            # default size; writes experiments/repa_digits.{md,json,png}
    python experiments/repa_digits.py --quick    # seconds: a smoke test (tests/test_repa_experiment.py)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignkit.data.digits import load_digits_captions
from alignkit.metrics.generation import GenerationJudge
from alignkit.models import REPARegularizer, SiT, flow_matching_loss, sample_flow
from alignkit.models.generative import DigitVAE, digit_target_encoder, train_vae

HERE = Path(__file__).resolve().parent


def _config(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {
            "width": 32, "depth": 2, "heads": 2, "steps": 30, "eval_every": 15, "batch": 32, "samples": 60,
            "sample_steps": 4, "seeds": [0], "repa": [(1, 0.5)], "encoder_epochs": 2, "judge_epochs": 2,
            "vae_epochs": 2, "latent_steps": 20, "lr": 1e-3, "repa_hidden": 32,
        }  # fmt: skip
    repa = [(int(p.split(":")[0]), float(p.split(":")[1])) for p in args.repa]
    return {
        "width": args.width, "depth": args.depth, "heads": 4, "steps": args.steps,
        "eval_every": args.eval_every, "batch": 64, "samples": 360, "sample_steps": args.sample_steps,
        "seeds": list(range(args.seeds)), "repa": repa, "encoder_epochs": 60, "judge_epochs": 40,
        "vae_epochs": args.vae_epochs, "latent_steps": args.latent_steps, "lr": 1e-3, "repa_hidden": 256,
    }  # fmt: skip


def _t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % Student-t interval (0 for one value)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    from scipy import stats

    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def train_diffusion(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: dict[str, Any],
    seed: int,
    judge: GenerationJudge,
    eval_labels: torch.Tensor,
    steps: int,
    repa: tuple[int, float] | None = None,
    target_tokens: torch.Tensor | None = None,
    decode: Any = None,
    patch_size: int = 2,
) -> list[dict[str, Any]]:
    """Train one SiT on (x, y); every ``eval_every`` steps sample one image per eval label and judge them."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SiT(
        input_size=x.shape[-1], patch_size=patch_size, in_channels=x.shape[1], width=cfg["width"],
        depth=cfg["depth"], num_heads=cfg["heads"], class_dropout=0.1,
    )  # fmt: skip
    reg = None
    params = list(model.parameters())
    if repa is not None:
        depth, weight = repa
        reg = REPARegularizer(
            model, SiT.block_name(depth), target_dim=target_tokens.shape[-1],  # type: ignore[union-attr]
            hidden_dim=cfg["repa_hidden"], weight=weight, source_dim=cfg["width"],
        )  # fmt: skip
        params += list(reg.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    curve = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (cfg["batch"],), generator=gen)
        loss = flow_matching_loss(model, x[idx], y[idx], generator=gen)
        if reg is not None:
            loss = loss + reg.loss(target_tokens[idx])  # type: ignore[index]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg["eval_every"] == 0 or step == steps:
            samples = sample_flow(
                model, eval_labels, steps=cfg["sample_steps"], method="heun", seed=1000 + seed
            )
            if decode is not None:
                samples = decode(samples)
            seconds = time.perf_counter() - start
            curve.append({"step": step, **judge.score(samples, eval_labels), "seconds": seconds})
    if reg is not None:
        reg.remove()
    return curve


def steps_to_reach(curve_steps: Sequence[int], curve: Sequence[float], level: float) -> float | None:
    """First step at which a (mean) FD curve reaches ``level``, linearly interpolated; None if never."""
    prev_s, prev_v = None, None
    for s, v in zip(curve_steps, curve, strict=True):
        if v <= level:
            if prev_s is None:
                return float(s)
            return prev_s + (s - prev_s) * (prev_v - level) / (prev_v - v)  # type: ignore[operator]
        prev_s, prev_v = s, v
    return None


def _summaries(runs: dict[str, list[list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, curves in runs.items():
        steps = [p["step"] for p in curves[0]]
        fd = np.array([[p["fd"] for p in c] for c in curves])
        out[name] = {
            "steps": steps,
            "fd_mean": fd.mean(0).tolist(),
            "fd_ci": [_t_interval(fd[:, j])[1] for j in range(fd.shape[1])],
            "final": {
                k: _t_interval([c[-1][k] for c in curves]) for k in ("fd", "accuracy", "precision", "recall")
            },
            "seconds": float(np.mean([c[-1]["seconds"] for c in curves])),
        }
    return out


def _plot(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, s in summary.items():
        m, ci = np.array(s["fd_mean"]), np.array(s["fd_ci"])
        ax.plot(s["steps"], m, label=name, lw=2 if name == "baseline" else 1.3)
        ax.fill_between(s["steps"], m - ci, m + ci, alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("FD to test digits (classifier features)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


VAE_FORMS = ("VAE", "VA-VAE (VF loss)")
_SHARED: dict[str, Any] = {}  # set by main before the worker processes fork


def _run_task(task: tuple[str, str, Any, int]) -> dict[str, Any]:
    """One training run: ("pixel", name, repa setting, seed) or ("latent", form, form, seed)."""
    kind, name, setting, seed = task
    sh = _SHARED
    cfg, judge, eval_labels = sh["cfg"], sh["judge"], sh["eval_labels"]
    train_x, train_y = sh["train_x"], sh["train_y"]
    torch.set_num_threads(1)
    if kind == "pixel":
        x = train_x[:, None] * 2 - 1  # pixels in [−1, 1]
        curve = train_diffusion(
            x, train_y, cfg, seed, judge, eval_labels, cfg["steps"], repa=setting,
            target_tokens=sh["target_tokens"], decode=lambda z: (z + 1) / 2,
        )  # fmt: skip
        print(f"{name:24s} seed {seed}: FD {curve[-1]['fd']:.2f} acc {curve[-1]['accuracy']:.3f} "
              f"({curve[-1]['seconds']:.0f} s)", flush=True)  # fmt: skip
        return {"curve": curve}
    vae = DigitVAE(latent_channels=4)
    target = sh["encoder"] if setting == VAE_FORMS[1] else None
    facts = train_vae(vae, train_x, target=target, epochs=cfg["vae_epochs"], seed=seed)
    with torch.no_grad():
        mean, _ = vae.encode(train_x)
        recon = vae.decode(vae.encode(sh["test_x"])[0])[:, 0]
    shift, scale = mean.mean((0, 2, 3), keepdim=True), mean.std()
    rfd = judge.score(recon[: len(eval_labels)], eval_labels)["fd"]
    facts = {**facts, "reconstruction_fd": rfd, "test_mse": float((recon - sh["test_x"]).pow(2).mean())}

    def decode_latent(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.decode(z * scale + shift)

    curve = train_diffusion(
        (mean - shift) / scale, train_y, cfg, seed, judge, eval_labels, cfg["latent_steps"],
        decode=decode_latent, patch_size=1,
    )  # fmt: skip
    print(f"{name:24s} seed {seed}: rFD {rfd:.2f}, generation FD {curve[-1]['fd']:.2f}", flush=True)
    return {"curve": curve, "vae": facts}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke test (tiny model, 30 steps)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600, help="diffusion training steps in pixel space")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=5, help="Heun steps per sample (2 model calls each)")
    p.add_argument("--repa", nargs="*", default=["1:0.5", "2:0.5", "3:0.5", "2:1.0"],
                   help="REPA settings depth:weight")  # fmt: skip
    p.add_argument("--vae-epochs", type=int, default=30)
    p.add_argument("--latent-steps", type=int, default=600, help="diffusion steps on each VAE latent space")
    p.add_argument("--no-vavae", action="store_true", help="skip the VA-VAE comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    p.add_argument("--workers", type=int, default=2, help="runs trained in parallel processes")
    p.add_argument("--out", type=Path, default=HERE, help="folder for repa_digits.{json,md,png}")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache of the judge and target encoder")
    args = p.parse_args(argv)
    if args.quick:
        args.workers = 1
    cfg = _config(args)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    data = load_digits_captions(seed=0)
    images, labels = torch.from_numpy(data.images).float(), torch.from_numpy(data.labels).long()
    tr, te = data.splits["train"], data.splits["test"]
    train_x, train_y = images[tr], labels[tr]
    judge = GenerationJudge.from_digits(
        train_x, train_y, images[te], labels[te], cache_dir=args.cache_dir, epochs=cfg["judge_epochs"]
    )
    eval_labels = labels[te][: cfg["samples"]]
    encoder, enc_facts = digit_target_encoder(train_x, epochs=cfg["encoder_epochs"], cache_dir=args.cache_dir)
    with torch.no_grad():
        target_tokens = encoder.tokens(train_x)  # (N, 16, 64), frozen
    noise = torch.rand(len(eval_labels), 8, 8, generator=torch.Generator().manual_seed(0))
    noise_fd = judge.score(noise)["fd"]
    train_fd = judge.score(train_x[: len(eval_labels)], train_y[: len(eval_labels)])
    print(f"[{time.perf_counter() - t0:.0f} s] judge and target encoder ready", flush=True)
    print(f"judge test accuracy {judge.test_accuracy:.3f}; FD(train rows vs test) {train_fd['fd']:.2f}; "
          f"FD(uniform noise) {noise_fd:.1f}", flush=True)  # fmt: skip

    _SHARED.update(
        cfg=cfg, judge=judge, eval_labels=eval_labels, train_x=train_x, train_y=train_y,
        test_x=images[te], target_tokens=target_tokens, encoder=encoder,
    )  # fmt: skip
    settings = [("baseline", None)] + [(f"REPA depth {d}, λ={w:g}", (d, w)) for d, w in cfg["repa"]]
    tasks: list[tuple[str, str, Any, int]] = [("pixel", n, r, sd) for n, r in settings for sd in cfg["seeds"]]
    if not args.no_vavae:
        tasks += [("latent", form, form, sd) for form in VAE_FORMS for sd in cfg["seeds"]]
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(args.workers) as pool:
            outputs = pool.map(_run_task, tasks, chunksize=1)
    else:
        outputs = [_run_task(t) for t in tasks]

    runs: dict[str, list[list[dict[str, Any]]]] = {n: [] for n, _ in settings}
    latent_runs: dict[str, list[list[dict[str, Any]]]] = {}
    if not args.no_vavae:
        latent_runs = {f: [] for f in VAE_FORMS}
    vae_facts: dict[str, list[dict[str, Any]]] = {f: [] for f in latent_runs}
    for (kind, name, _, _), out in zip(tasks, outputs, strict=True):
        if kind == "pixel":
            runs[name].append(out["curve"])
        else:
            latent_runs[name].append(out["curve"])
            vae_facts[name].append(out["vae"])
    summary = _summaries(runs)
    base = summary["baseline"]
    base_final = base["fd_mean"][-1]
    for s in summary.values():
        reach = steps_to_reach(s["steps"], s["fd_mean"], base_final)
        s["steps_to_baseline_final_fd"] = reach
        s["speedup"] = None if reach is None else base["steps"][-1] / reach
    vavae: dict[str, Any] = {}
    if latent_runs:
        for form, s in _summaries(latent_runs).items():
            vavae[form] = {"vae": vae_facts[form], **s}
        vavae["reconstruction_fd"] = {
            f: _t_interval([v["reconstruction_fd"] for v in vae_facts[f]]) for f in latent_runs
        }

    elapsed = time.perf_counter() - t0
    result = {
        "config": {k: v for k, v in cfg.items()},
        "judge_test_accuracy": judge.test_accuracy,
        "fd_train_vs_test": train_fd["fd"],
        "fd_noise": noise_fd,
        "target_encoder": enc_facts,
        "repa": summary,
        "vavae": vavae,
        "seconds": elapsed,
        "torch_threads": torch.get_num_threads(),
        "workers": args.workers,
        "command": "python experiments/repa_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "repa_digits_quick" if args.quick else "repa_digits"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    title = (
        f"SiT w{cfg['width']} d{cfg['depth']} on 8×8 digits, {len(cfg['seeds'])} seeds, "
        "mean ± 95 % t-interval"
    )
    _plot(summary, args.out / f"{stem}.png", title)
    _write_md(result, args.out / f"{stem}.md", stem)
    print(f"done in {elapsed:.0f} s", flush=True)
    return result


def _fmt(mean_ci: Sequence[float], digits: int = 2) -> str:
    m, ci = mean_ci
    return f"{m:.{digits}f} ± {ci:.{digits}f}"


def _write_md(r: dict[str, Any], path: Path, stem: str) -> None:
    c = r["config"]
    lines = [
        "# REPA and VA-VAE on the 8×8 digits",
        "",
        f"Generated by `{r['command'].strip()}` in {r['seconds']:.0f} s on CPU "
        f"({r['workers']} worker processes, {r['torch_threads']} torch thread each).",
        f"SiT width {c['width']}, depth {c['depth']}, patch 2 (16 tokens), batch {c['batch']}, "
        f"AdamW lr {c['lr']}, {c['steps']} steps, seeds {c['seeds']}. "
        f"FD on {c['samples']} samples (Heun, {c['sample_steps']} steps, "
        f"no guidance) against the test split in a digit classifier's features (test accuracy "
        f"{r['judge_test_accuracy']:.3f}). References: "
        f"FD(training images vs test) = {r['fd_train_vs_test']:.2f}, "
        f"FD(uniform noise) = {r['fd_noise']:.1f}. Intervals: mean ± 95 % Student-t half-width over seeds.",
        "",
        f"![FD against training steps]({stem}.png)",
        "",
        "| setting | final FD | class accuracy | precision | recall "
        "| steps to baseline's final FD | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in r["repa"].items():
        f = s["final"]
        reach = s["steps_to_baseline_final_fd"]
        reach_text = "—" if reach is None else f"{reach:.0f}"
        speedup = "—" if s["speedup"] is None else f"{s['speedup']:.2f}×"
        lines.append(
            f"| {name} | {_fmt(f['fd'])} | {_fmt(f['accuracy'], 3)} | {_fmt(f['precision'], 3)} | "
            f"{_fmt(f['recall'], 3)} | {reach_text} | {speedup} |"
        )
    if r["vavae"]:
        lines += [
            "",
            f"VA-VAE: a 4×4×4-latent VAE trained {c['vae_epochs']} epochs with and without the VF loss "
            "(mcos m=0.5 + mdms m=0.25 against the SimCLR patch tokens, "
            "adaptive weight 0.1·‖∇L_rec‖/‖∇L_vf‖), "
            f"then the same SiT (patch 1) {c['latent_steps']} steps on each latent space.",
            "",
            "| latent space | reconstruction FD (test) | generation FD | class accuracy "
            "| precision | recall |",
            "|---|---|---|---|---|---|",
        ]
        for form in ("VAE", "VA-VAE (VF loss)"):
            s = r["vavae"][form]
            f = s["final"]
            lines.append(
                f"| {form} | {_fmt(r['vavae']['reconstruction_fd'][form])} | {_fmt(f['fd'])} | "
                f"{_fmt(f['accuracy'], 3)} | {_fmt(f['precision'], 3)} | {_fmt(f['recall'], 3)} |"
            )
    text = "\n".join(lines) + "\n"
    marker = "\n## Reading it"
    if path.is_file() and marker in path.read_text():  # keep the hand-written analysis below the marker
        text += path.read_text()[path.read_text().index(marker) :]
    path.write_text(text)


if __name__ == "__main__":
    main()
