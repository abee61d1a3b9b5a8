"""`zgdyn bench`: training throughput against the plain PyTorch loop, side by side.

Every figure is a ratio of medians measured in this one process, the variants alternating
repeat by repeat, so machine noise hits all of them alike:

- plain:  ``nn.Sequential`` on dense one-hots with ``torch.optim.AdamW`` and the same
          weighted loss and evaluation interval (what a user would write);
- zgdyn:  `Trainer` (gather first layer, fused backward, flat-buffer AdamW);
- record: `Trainer` recording to an HDF5 run file with a checkpoint every 100 epochs;
- ensembles: `zgdyn.core.ensemble.Ensemble` of K members, in model-epochs/s against K = 1;
- subnormals: `Trainer` from a state whose dead units hold subnormal weights, without and
          with `flush_subnormals`.

With ``device="cuda"`` the training variants run on the GPU (the analyses stay on the CPU).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.config import Config, ConfigError, DataConfig, RecordConfig, ScheduleConfig
from ..core.data import loss_weights, make_split, zipf_weights
from ..core.model import matmul_flops
from ..core.step import _mkldnn_linear_available, keep_heap_mapped
from ..core.train import Trainer

BENCH_DIR = Path("data/bench")


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize(device)


def _plain_loop(cfg: Config, epochs: int) -> float:
    """Seconds for `epochs` epochs of the obvious PyTorch implementation."""
    with torch.random.fork_rng(devices=[]):  # nn.Linear draws from the global generator
        torch.manual_seed(cfg.seed)
        return _plain_loop_body(cfg, epochs)


def _plain_loop_body(cfg: Config, epochs: int) -> float:
    d, o, dev = cfg.data, cfg.optim, cfg.device
    split = make_split(d.p, d.train_frac, cfg.seed, d.split_rng)
    grid = np.arange(d.p * d.p)
    a, b, y = (torch.as_tensor(t, device=dev) for t in split.tokens(grid))
    x = torch.cat([nn.functional.one_hot(a, d.p), nn.functional.one_hot(b, d.p)], 1).float()
    tr = torch.as_tensor(split.train_idx, device=dev)
    te = torch.as_tensor(split.test_idx, device=dev)
    x_tr, y_tr = x[tr], y[tr]
    w = torch.as_tensor(loss_weights(split, d.zipf_s, d), device=dev).float()
    dims = [2 * d.p, *cfg.model.hidden]
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(dims[-1], d.p)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, weight_decay=o.weight_decay,
                            betas=(o.beta1, o.beta2), eps=o.eps)
    _sync(dev)
    t0 = time.perf_counter()
    for epoch in range(epochs + 1):
        if epoch % cfg.record.eval_every == 0:
            with torch.no_grad():
                logits = net(x)
                ce = nn.functional.cross_entropy(logits, y, reduction="none")
                correct = (logits.argmax(1) == y).float()
                _ = (ce[tr] * w).sum().item(), ce[te].mean().item(), correct[te].mean().item()
        if epoch == epochs:
            break
        opt.zero_grad(set_to_none=True)
        loss = (nn.functional.cross_entropy(net(x_tr), y_tr, reduction="none") * w).sum()
        loss.backward()
        opt.step()
    _sync(dev)
    return time.perf_counter() - t0


def _zgdyn_loop(cfg: Config, record_dir: str | None) -> float:
    trainer = Trainer(cfg)
    callbacks = []
    if record_dir is not None:
        from ..store.writer import RunWriter
        path = Path(record_dir) / "bench.h5"
        writer = RunWriter.create(path, cfg, trainer, force=True)
        callbacks.append(writer)
    _sync(cfg.device)
    t0 = time.perf_counter()
    trainer.run(callbacks)
    if record_dir is not None:
        writer.close(commit=True)
    _sync(cfg.device)
    return time.perf_counter() - t0


def _ensemble_loop(cfg: Config, k: int, mode: str = "auto") -> float:
    """Seconds for an ensemble of k members (seeds seed .. seed + k - 1) of `cfg`."""
    from ..core.ensemble import Ensemble

    ens = Ensemble([cfg.replace(seed=cfg.seed + i) for i in range(k)], mode=mode)
    _sync(cfg.device)
    t0 = time.perf_counter()
    ens.run()
    _sync(cfg.device)
    return time.perf_counter() - t0


def _planted_loop(cfg: Config, dead: float, epochs: int) -> tuple[float, float]:
    """(seconds for `epochs` epochs, fraction of θ, m, v subnormal at the end) from an init
    where a fraction `dead` of each hidden layer's units is dead (bias -1) with every weight
    into or out of them at 1e-39, a float32 subnormal: the state weight decay leaves dead
    units in after a long run."""
    trainer = Trainer(cfg)
    step = trainer.step
    widths = cfg.model.hidden
    with torch.no_grad():
        for i, width in enumerate(widths, 1):
            k = max(1, round(dead * width))
            step.params[f"fc{i}.weight"][:k] = 1e-39
            step.params[f"fc{i}.bias"][:k] = -1.0
            nxt = f"fc{i + 1}.weight" if i < len(widths) else "out.weight"
            step.params[nxt][:, :k] = 1e-39
    _sync(cfg.device)
    t0 = time.perf_counter()
    trainer.advance_to(epochs)
    _sync(cfg.device)
    seconds = time.perf_counter() - t0
    tiny = torch.finfo(step.theta.dtype).tiny
    buffers = (step.theta, step.exp_avg, step.exp_avg_sq)
    sub = sum(int(((x != 0) & (x.abs() < tiny)).sum()) for x in buffers)
    return seconds, sub / sum(x.numel() for x in buffers)


def bench_subnormals(cfg: Config, *, dead: float = 0.14, epochs: int = 100,
                     repeats: int = 3) -> dict[str, Any]:
    """Epochs/s from a state with dead units whose weights are subnormal (`_planted_loop`),
    without and with `flush_subnormals`, alternating repeat by repeat."""
    variants = {"plain": cfg, "flushed": cfg.replace(flush_subnormals=True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    fraction: dict[str, float] = {}
    for _ in range(repeats):
        for k, c in variants.items():
            seconds, fraction[k] = _planted_loop(c, dead, epochs)
            times[k].append(seconds)
    rate = {k: epochs / statistics.median(v) for k, v in times.items()}
    return {"dead_fraction": dead, "epochs": epochs, "epochs_per_s": rate,
            "speedup": rate["flushed"] / rate["plain"], "subnormal_fraction": fraction,
            "raw_seconds": times}


def bench_ensembles(cfg: Config, sizes: tuple[int, ...], *, model_epochs: int = 1600,
                    repeats: int = 3, mode: str = "auto") -> dict[str, Any]:
    """Model-epochs/s of ensembles of each size, the sizes alternating repeat by repeat.

    Each ensemble trains about `model_epochs` model-epochs (at least 100 epochs each, the
    evaluation interval), so every size costs about the same time.
    """
    epochs = {k: max(100, -(-model_epochs // k // 100) * 100) for k in sizes}
    times: dict[int, list[float]] = {k: [] for k in sizes}
    _ensemble_loop(cfg.replace(epochs=20), min(sizes), mode)  # warm-up
    for _ in range(repeats):
        for k in sizes:
            times[k].append(_ensemble_loop(cfg.replace(epochs=epochs[k]), k, mode))
    rate = {k: k * epochs[k] / statistics.median(v) for k, v in times.items()}
    base = rate[min(sizes)]
    return {"mode": mode, "epochs": {str(k): epochs[k] for k in sizes},
            "model_epochs_per_s": {str(k): rate[k] for k in sizes},
            "vs_smallest": {str(k): rate[k] / base for k in sizes},
            "raw_seconds": {str(k): v for k, v in times.items()}}


def _gemm_gflops(n: int = 2048, iters: int = 10, device: str = "cpu") -> dict[str, float]:
    """The best large-GEMM rate this process reaches, via torch.mm and oneDNN's linear."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    fns = {"torch.mm": lambda: torch.mm(a, b)}
    if device != "cpu":
        fns["torch.mm"]()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        _sync(device)
        return {"torch.mm": 2 * n**3 * iters / (time.perf_counter() - t0) / 1e9}
    if _mkldnn_linear_available():
        fns["onednn_linear"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none",
                                                                           [], "")
    out = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out[name] = 2 * n**3 * iters / (time.perf_counter() - t0) / 1e9
    return out


def run_bench(*, epochs: int = 400, repeats: int = 5, p: int = 97, device: str = "cpu",
              ensemble_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 64),
              ensemble_model_epochs: int = 1600, analysis: bool = True,
              window: int = 100) -> dict[str, Any]:
    """Median seconds per epoch of each variant, and their ratios; ensembles' model-epochs/s
    for each size; the analyses' rates (on the CPU)."""
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ConfigError(f"repeats: must be an integer >= 1, got {repeats!r}")
    if not all(isinstance(k, int) and k >= 1 for k in ensemble_sizes):
        raise ConfigError(f"ensemble sizes: must be integers >= 1, got {list(ensemble_sizes)}")
    keep_heap_mapped()  # applies to every variant alike
    cfg = Config(device=device, data=DataConfig(p=p), schedule=ScheduleConfig(epochs=epochs),
                 record=RecordConfig(eval_every=100, ckpt_every=100, window=window,
                                     keyframe_every=100 * max(1, epochs // 100)))
    times: dict[str, list[float]] = {"plain": [], "zgdyn": [], "zgdyn_record": []}
    _plain_loop(cfg, 20), _zgdyn_loop(cfg.replace(epochs=20), None)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            times["plain"].append(_plain_loop(cfg, epochs))
            times["zgdyn"].append(_zgdyn_loop(cfg, None))
            times["zgdyn_record"].append(_zgdyn_loop(cfg, tmp))
    ms = {k: 1e3 * statistics.median(v) / epochs for k, v in times.items()}
    n_train = int(p * p * cfg.data.train_frac)
    flops = matmul_flops(p, cfg.model.hidden, n_train)
    gemm = _gemm_gflops(device=device)
    ens = (bench_ensembles(cfg, tuple(ensemble_sizes), model_epochs=ensemble_model_epochs,
                           repeats=min(repeats, 3)) if ensemble_sizes else None)
    subnormals = bench_subnormals(cfg, repeats=min(repeats, 3))
    if ens is not None:
        ens["achieved_gflops"] = {k: r * flops / 1e9
                                  for k, r in ens["model_epochs_per_s"].items()}
    return {
        "machine": _machine(device),
        "setup": {"p": p, "hidden": list(cfg.model.hidden), "epochs": epochs,
                  "repeats": repeats, "eval_every": 100, "ckpt_every": 100,
                  "window": window},
        "ms_per_epoch": ms,
        "epochs_per_s": {k: 1e3 / v for k, v in ms.items()},
        "speedup_vs_plain": ms["plain"] / ms["zgdyn"],
        "recording_overhead": ms["zgdyn_record"] / ms["zgdyn"] - 1.0,
        "useful_gflop_per_epoch": flops / 1e9,
        "achieved_gflops": flops / (ms["zgdyn"] * 1e-3) / 1e9,
        "large_gemm_gflops": gemm,
        "raw_seconds": times,
        "ensembles": ens,
        "subnormals": subnormals,
        "analysis": bench_analysis(p) if analysis else None,
    }


def bench_analysis(p: int = 97, hidden: tuple[int, ...] = (128, 128), n: int = 20,
                   k: int = 3) -> dict[str, Any]:
    """Analysis throughput: checkpoints/s of `checkpoint_measures`, HVPs/s, and the HVPs that
    Lanczos (ARPACK) and deflated power iteration need for the top k at equal tolerance."""
    from ..analysis.fourier import checkpoint_measures
    from ..analysis.hessian import (deflated_power_iteration, extreme_eigs, flatten_params,
                                    make_hvp, weighted_loss_fn)
    from ..core.model import build_model

    split = make_split(p, 0.3, 42)
    model = build_model(p, hidden, init="lecun", seed=0)
    params = {k_: v.detach() for k_, v in model.named_parameters()}
    train = torch.as_tensor(split.train_idx)
    w = torch.as_tensor(zipf_weights(split, 1.5))
    checkpoint_measures(params, p, [1, 2, 3], train, w)
    t0 = time.perf_counter()
    for _ in range(n):
        checkpoint_measures(params, p, [1, 2, 3], train, w)
    ckpt_s = n / (time.perf_counter() - t0)
    out: dict[str, Any] = {"checkpoints_per_s": ckpt_s, "ms_per_checkpoint": 1e3 / ckpt_s}
    a, b, y = split.tokens(split.train_idx)
    point = (p, params, a, b, y, zipf_weights(split, 1.5))
    out["hvp"] = bench_hvp(*point, point=f"p = {p} at init, s = 1.5")
    out.update({f"hvp_per_s_{dt}": out["hvp"][dt]["torch_func"] for dt in ("float32",
                                                                          "float64")})
    out["extremes"] = bench_extremes(*point, point=f"p = {p} at init, s = 1.5")
    like = {k_: v.double() for k_, v in params.items()}
    theta = flatten_params(like)
    hvp = make_hvp(weighted_loss_fn(p, a, b, y, w, like=like), theta)
    tol = 1e-4
    lan = extreme_eigs(hvp, theta.numel(), k=k, which="top", tol=tol)
    power = deflated_power_iteration(hvp, theta.numel(), k=k, tol=tol)
    out["top_k"] = {"k": k, "tol": tol, "lanczos_hvps": lan.n_hvp, "power_hvps": power.n_hvp,
                    "lanczos_eigenvalues": lan.eigenvalues.tolist(),
                    "power_eigenvalues": power.eigenvalues.tolist(),
                    "lanczos_max_residual": float(lan.residuals.max()),
                    "power_max_residual": float(power.residuals.max())}
    return out


def _rates(fns: dict[str, tuple[Any, int]], repeats: int) -> dict[str, float]:
    """Products/s of each fn (fn, products per call), the fns alternating call by call;
    the median over `repeats` rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn, _ in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, (fn, n) in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n)
    return {k: 1.0 / statistics.median(v) for k, v in times.items()}


def bench_hvp(p: int, params: dict[str, torch.Tensor], a: np.ndarray, b: np.ndarray,
              y: np.ndarray, w: Any, *, block: int = 8, repeats: int = 7,
              point: str = "") -> dict[str, Any]:
    """HVPs/s of torch.func's forward-over-reverse HVP, the hand-written one
    (`zgdyn.analysis.hvp.MLPHessian`) one vector at a time, and its block form (`block` vectors
    per call), side by side in float32 and float64; their ratios to torch.func."""
    from ..analysis.hessian import flatten_params, make_hvp, weighted_loss_fn
    from ..analysis.hvp import MLPHessian

    out: dict[str, Any] = {"block": block, "repeats": repeats, "point": point}
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        like = {k: v.to(dtype) for k, v in params.items()}
        theta = flatten_params(like)
        func = make_hvp(weighted_loss_fn(p, a, b, y, w, like=like), theta)
        t0 = time.perf_counter()
        hand = MLPHessian(p, like, a, b, y, w, dtype=dtype)
        setup = time.perf_counter() - t0
        V = torch.randn(block, theta.numel(), dtype=dtype, generator=gen)
        rates = _rates({"torch_func": (lambda: func(V[0]), 1),
                        "hand": (lambda: hand(V[0]), 1),
                        "hand_block": (lambda: hand.block(V), block)}, repeats)
        ref = func(V[0])
        rates.update({"hand_vs_torch_func": rates["hand"] / rates["torch_func"],
                      "block_vs_torch_func": rates["hand_block"] / rates["torch_func"],
                      "hand_setup_s": setup,
                      "rel_diff": float((hand(V[0]) - ref).norm() / ref.norm())})
        out[str(dtype)[6:]] = rates
    return out


def bench_extremes(p: int, params: dict[str, torch.Tensor], a: np.ndarray, b: np.ndarray,
                   y: np.ndarray, w: Any, *, k: int = 10, tol: float = 1e-6,
                   point: str = "") -> dict[str, Any]:
    """Seconds for the k top and k bottom float64 eigenpairs of H: ARPACK (two runs,
    which = LA and SA, ‖r‖ ≤ tol·|λ| per pair) on torch.func's HVP, against the block
    Krylov solver (one run, ‖r‖ ≤ tol·max|λ|) on the hand-written block HVP."""
    from ..analysis.hessian import extreme_eigs, flatten_params, make_hvp, weighted_loss_fn
    from ..analysis.hvp import MLPHessian
    from ..analysis.krylov import block_extremes

    like = {k_: v.double() for k_, v in params.items()}
    theta = flatten_params(like)
    out: dict[str, Any] = {"k": k, "tol": tol, "point": point}
    t0 = time.perf_counter()
    func = make_hvp(weighted_loss_fn(p, a, b, y, w, like=like), theta)
    ref = extreme_eigs(func, theta.numel(), k=k, which="both", tol=tol)
    out["arpack_torch_func"] = {"seconds": time.perf_counter() - t0, "hvps": ref.n_hvp,
                                "max_residual": float(ref.residuals.max()),
                                "converged": ref.converged,
                                "eigenvalues": ref.eigenvalues.tolist()}
    t0 = time.perf_counter()
    hand = MLPHessian(p, like, a, b, y, w)
    new = block_extremes(hand.block, hand.n, k=k, which="both", tol=tol)
    out["block_hand"] = {"seconds": time.perf_counter() - t0, "hvps": new.n_hvp,
                         "max_residual": float(new.residuals.max()),
                         "converged": new.converged, "eigenvalues": new.eigenvalues.tolist()}
    scale = float(ref.eigenvalues.abs().max())
    out["max_eigenvalue_diff_over_scale"] = (
        float((ref.eigenvalues - new.eigenvalues).abs().max()) / scale
        if len(ref.eigenvalues) == len(new.eigenvalues) else None)
    out["speedup"] = out["arpack_torch_func"]["seconds"] / out["block_hand"]["seconds"]
    return out


def bench_point(p: int = 97, hidden: tuple[int, ...] = (128, 128), *,
                run: str | None = None, epoch: int | None = None) -> tuple[Any, ...]:
    """(p, named params, a, b, y, w, label) of the point the Hessian rows measure: the
    default model at init under s = 1.5, or a run's checkpoint under its own s."""
    if run is None:
        from ..core.model import build_model
        split = make_split(p, 0.3, 42)
        model = build_model(p, hidden, init="lecun", seed=0)
        params = {k: v.detach() for k, v in model.named_parameters()}
        a, b, y = split.tokens(split.train_idx)
        return p, params, a, b, y, zipf_weights(split, 1.5), f"p = {p} at init, s = 1.5"
    from ..store.reader import open_run
    with open_run(run) as r:
        epoch = int(r.checkpoint_epochs[-1]) if epoch is None else epoch
        params, cfg, split = r.params_at(epoch), r.config, r.split
    s = cfg.schedule.switch_s if cfg.schedule.switch_s is not None else cfg.data.zipf_s
    a, b, y = split.tokens(split.train_idx)
    return (cfg.data.p, params, a, b, y, loss_weights(split, s, cfg.data),
            f"{run} at epoch {epoch}, s = {s:g}")


def _machine(device: str = "cpu") -> dict[str, Any]:
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__),
               "device": device}
    if device != "cpu":
        machine["gpu"] = torch.cuda.get_device_name(device)
    return machine


def run_hessian_bench(*, p: int = 97, run: str | None = None, epoch: int | None = None,
                      k: int = 10, tol: float = 1e-6, repeats: int = 7) -> dict[str, Any]:
    """The Hessian rows alone (`zgdyn bench --hessian-only`): HVPs/s of the three HVPs and
    the k + k extremes, at the default model's init or at a run's checkpoint."""
    p, params, a, b, y, w, label = bench_point(p, run=run, epoch=epoch)
    return {"machine": _machine(), "hvp": bench_hvp(p, params, a, b, y, w, repeats=repeats,
                                                    point=label),
            "extremes": bench_extremes(p, params, a, b, y, w, k=k, tol=tol, point=label)}


def format_hessian(r: dict[str, Any]) -> str:
    """The Hessian rows: HVPs/s side by side, and the extremes' seconds."""
    h = r["hvp"]
    lines = [f"HVPs/s at {h['point']} (median of {h['repeats']} alternating rounds; block "
             f"= {h['block']} vectors per call):",
             f"{'dtype':<9}{'torch.func':>12}{'hand':>10}{'hand block':>12}{'hand / func':>13}"
             f"{'block / func':>14}{'rel. diff':>11}"]
    for dt in ("float32", "float64"):
        x = h[dt]
        lines.append(f"{dt:<9}{x['torch_func']:>12.1f}{x['hand']:>10.1f}{x['hand_block']:>12.1f}"
                     f"{x['hand_vs_torch_func']:>12.2f}x{x['block_vs_torch_func']:>13.2f}x"
                     f"{x['rel_diff']:>11.1e}")
    e = r["extremes"]
    old, new = e["arpack_torch_func"], e["block_hand"]
    diff = e["max_eigenvalue_diff_over_scale"]
    lines += [f"{e['k']} top + {e['k']} bottom float64 eigenpairs at {e['point']}, tol "
              f"{e['tol']:g}:",
              f"  ARPACK on torch.func's HVP      {old['seconds']:7.1f} s  {old['hvps']:>5} HVPs"
              f"  max residual {old['max_residual']:.1e}  (|r| <= tol*|lambda| per pair)",
              f"  block Krylov on the hand HVP    {new['seconds']:7.1f} s  {new['hvps']:>5} HVPs"
              f"  max residual {new['max_residual']:.1e}  (|r| <= tol*max|lambda|)",
              f"  {e['speedup']:.2f}x faster; eigenvalues agree to "
              + ("-" if diff is None else f"{diff:.1e}") + " of max|lambda|"]
    return "\n".join(lines)


def format_bench(r: dict[str, Any]) -> str:
    ms, eps = r["ms_per_epoch"], r["epochs_per_s"]
    s = r["setup"]
    window = s.get("window", 100)  # files from before the flag: the default
    lines = [f"p = {s['p']}, hidden {s['hidden']}, {s['epochs']} epochs x {s['repeats']} "
             f"alternating repeats, evaluation every {s['eval_every']}, collapse "
             f"detector {f'window {window}' if window else 'off'}, "
             f"{r['machine']['torch_threads']} threads",
             f"{'variant':<34}{'ms/epoch':>10}{'epochs/s':>10}{'vs plain':>10}"]
    names = {"plain": "plain PyTorch loop", "zgdyn": "zgdyn",
             "zgdyn_record": "zgdyn + HDF5, checkpoint every 100"}
    for k, label in names.items():
        lines.append(f"{label:<34}{ms[k]:>10.3f}{eps[k]:>10.0f}{ms['plain'] / ms[k]:>9.2f}x")
    gemm = max(r["large_gemm_gflops"].values())
    lines += [f"recording overhead: {100 * r['recording_overhead']:+.1f}%",
              f"achieved {r['achieved_gflops']:.0f} GFLOP/s of useful matmul work "
              f"({r['useful_gflop_per_epoch']:.3f} GFLOP/epoch); best large GEMM here "
              f"{gemm:.0f} GFLOP/s ({', '.join(f'{k} {v:.0f}' for k, v in r['large_gemm_gflops'].items())})"]
    if r.get("ensembles"):
        e = r["ensembles"]
        lines.append(f"ensembles ({e['mode']} mode; each size trains about the same "
                     "model-epochs, median of alternating repeats):")
        lines.append(f"{'members K':<12}{'epochs':>8}{'model-epochs/s':>16}{'vs K=min':>10}"
                     f"{'GFLOP/s':>10}")
        for k, rate in e["model_epochs_per_s"].items():
            lines.append(f"{k:<12}{e['epochs'][k]:>8}{rate:>16.0f}"
                         f"{e['vs_smallest'][k]:>9.2f}x{e['achieved_gflops'][k]:>10.0f}")
    if r.get("subnormals"):  # files from before flush_subnormals lack it
        sn = r["subnormals"]
        rate = sn["epochs_per_s"]
        lines.append(f"dead units with subnormal weights ({100 * sn['dead_fraction']:.0f}% of "
                     f"each layer, {sn['epochs']} epochs): {rate['plain']:.0f} epochs/s, "
                     f"{rate['flushed']:.0f} with flush_subnormals ({sn['speedup']:.2f}x); "
                     f"{100 * sn['subnormal_fraction']['plain']:.1f}% of theta, m, v "
                     f"subnormal without, {100 * sn['subnormal_fraction']['flushed']:.1f}% "
                     "with")
    if r.get("analysis"):
        an = r["analysis"]
        t = an["top_k"]
        lines += [f"analysis: {an['checkpoints_per_s']:.1f} checkpoints/s "
                  f"({an['ms_per_checkpoint']:.1f} ms each: logits, spectrum, both "
                  f"decompositions, progress measures)"]
        if "hvp" in an:  # files from before the hand-written HVP lack these rows
            lines.append(format_hessian(an))
        lines.append(f"top {t['k']} Hessian eigenpairs at tol {t['tol']:g} (float64, s = 1.5, "
                     f"at init): Lanczos {t['lanczos_hvps']} HVPs, deflated power iteration "
                     f"{t['power_hvps']} HVPs ({t['power_hvps'] / t['lanczos_hvps']:.1f}x); "
                     f"max residual {t['lanczos_max_residual']:.1e} vs "
                     f"{t['power_max_residual']:.1e}")
    return "\n".join(lines)


def save_bench(result: dict[str, Any], path: str | Path | None = None) -> Path:
    path = Path(path) if path else BENCH_DIR / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


__all__ = ["BENCH_DIR", "bench_ensembles", "run_bench", "bench_analysis", "bench_hvp",
           "bench_extremes", "bench_point", "run_hessian_bench", "format_hessian", "format_bench",
           "save_bench"]
