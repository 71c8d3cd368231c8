"""From the results dict of `benchmarks.run`: the ratios against the targets, and the table."""

from __future__ import annotations

from benchmarks.common import ratio
from tfllm.config import ModelConfig
from tfllm.observe import flops

PEERS = ["keras-hub-fit", "torch-eager", "torch-compile"]


def flops_per_token(shape: dict) -> float:
    """PaLM-style training FLOPs per token of the benchmark shape (same for every contender)."""
    model = ModelConfig(
        vocabulary_size=shape["vocabulary_size"],
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
        hidden_dim=shape["hidden_dim"],
        intermediate_dim=shape["intermediate_dim"],
        activation="gelu",
    )
    return flops.flops_per_token(model, shape["seq_len"])["palm"]


def _median(summary: dict | None, key: str = "tokens_per_second") -> float | None:
    return ((summary or {}).get(key) or {}).get("median")


def summary(results: dict) -> dict:
    """Every target's measured ratio and whether it is met (None: not measured)."""
    # The peak is a ceiling: the best round, since a busy moment only ever lowers a probe.
    peak = ((results.get("peak") or {}).get("xla_gflops") or {}).get("max")
    out: dict = {"peak_xla_gflops": peak}
    for size, section in results.get("training", {}).items():
        contenders = section["contenders"]
        per_token = flops_per_token(section["shape"])
        mfu = {
            name: (_median(c) * per_token / (peak * 1e9) if _median(c) and peak else None)
            for name, c in contenders.items()
        }
        peers = {name: _median(contenders.get(name)) for name in PEERS}
        peers = {name: value for name, value in peers.items() if value}
        fastest = max(peers, key=peers.get) if peers else None
        tfllm = _median(contenders.get("tfllm"))
        xla_off = _median(contenders.get("tfllm-no-xla"))
        mirrored = _median(contenders.get("tfllm-mirrored-2"))
        out[size] = {
            "mfu_of_xla_peak": mfu,
            "fastest_peer": fastest,
            "vs_fastest_peer": tfllm / peers[fastest] if tfllm and fastest else None,
            "xla_vs_no_xla": tfllm / xla_off if tfllm and xla_off else None,
            "mirrored_2_vs_single": mirrored / tfllm if tfllm and mirrored else None,
        }
    pipeline = results.get("pipeline", {})
    fed = ratio(pipeline.get("shards_tokens_per_second"), pipeline.get("memory_tokens_per_second"))
    out["pipeline"] = {
        "reader_vs_consumption": ratio(
            pipeline.get("reader_tokens_per_second"), pipeline.get("memory_tokens_per_second")
        ),
        "input_stall": 1.0 - fed if fed is not None else None,
    }
    per_token = (results.get("generation") or {}).get("ms_per_token", {})
    out["generation"] = {
        "cached_speedup": ratio(
            per_token.get("tfllm uncached (graph)"), per_token.get("tfllm cached (graph)")
        )
    }
    targets = {
        "tokens/s vs fastest peer, tiny (>= 1.1)": (
            out.get("tiny", {}).get("vs_fastest_peer"),
            1.1,
        ),
        "tokens/s vs fastest peer, small (>= 1.1)": (
            out.get("small", {}).get("vs_fastest_peer"),
            1.1,
        ),
        "MFU small, of XLA matmul peak (>= 0.70)": (
            out.get("small", {}).get("mfu_of_xla_peak", {}).get("tfllm"),
            0.70,
        ),
        "XLA vs no XLA, tiny (>= 1.0)": (out.get("tiny", {}).get("xla_vs_no_xla"), 1.0),
        "XLA vs no XLA, small (>= 1.0)": (out.get("small", {}).get("xla_vs_no_xla"), 1.0),
        "cached vs uncached decoding, 128 tokens (>= 4)": (
            out["generation"]["cached_speedup"],
            4.0,
        ),
    }
    stall = out["pipeline"]["input_stall"]
    out["targets"] = {
        name: {"measured": value, "met": None if value is None else value >= bar}
        for name, (value, bar) in targets.items()
    }
    out["targets"]["input stall (< 0.03)"] = {
        "measured": stall,
        "met": None if stall is None else stall < 0.03,
    }
    return out


def _fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _spread(s: dict | None, digits: int = 0) -> str:
    if not s or s.get("median") is None:
        return "-"
    flag = " (outlier)" if s.get("outliers") else ""
    return f"{_fmt(s['median'], digits)} ({_fmt(s['min'], digits)}-{_fmt(s['max'], digits)}){flag}"


def markdown(results: dict) -> str:
    m, s = results["machine"], results["summary"]
    lines = [
        f"`{results['command']}` on {m['host']}: {m['cpu']}, {m['cores']} cores; load average "
        f"{m['load_average'][0]:.2f} before, {m.get('load_average_after', [0])[0]:.2f} after; "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        "",
        f"B0 peak float32 matmul: XLA {_spread(results['peak'].get('xla_gflops'), 1)} GFLOP/s, "
        f"no XLA {_spread(results['peak'].get('no_xla_gflops'), 1)} GFLOP/s "
        f"(median (min-max) of alternating rounds; MFU below uses the best XLA round)",
        "",
        "| size | contender | tokens/s (min-max) | MFU | first step s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for size, section in results["training"].items():
        for name, c in section["contenders"].items():
            if c.get("tokens_per_second", {}).get("median") is None:
                lines.append(f"| {size} | {name} | {'; '.join(c.get('errors', []))[:80]} | | | |")
                continue
            mfu = s[size]["mfu_of_xla_peak"].get(name)
            lines.append(
                f"| {size} | {name} | {_spread(c['tokens_per_second'])} | "
                f"{_fmt(100 * mfu if mfu else None, 1)}% | "
                f"{_fmt(c['first_step_seconds']['median'], 1)} | "
                f"{_fmt(c['peak_rss_mb']['median'])} |"
            )
    p = results.get("pipeline", {})
    lines += [
        "",
        f"B3 pipeline tokens/s: reader {_spread(p.get('reader_tokens_per_second'))}, step fed "
        f"from memory {_spread(p.get('memory_tokens_per_second'))}, from shards "
        f"{_spread(p.get('shards_tokens_per_second'))}",
        "",
        "| B4 generation, batch 1, greedy | first call ms/token | steady ms/token (min-max) |",
        "|---|---|---|",
    ]
    g = results.get("generation", {})
    for name, steady in g.get("ms_per_token", {}).items():
        first = g["first_call_ms_per_token"][name]
        lines.append(f"| {name} | {_fmt(first, 2)} | {_spread(steady, 2)} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for name, t in s["targets"].items():
        met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
        lines.append(f"| {name} | {_fmt(t['measured'], 3)} | {met} |")
    for size in results["training"]:
        lines.append(
            f"| B5 MirroredStrategy 2 logical CPUs / 1 device, {size} | "
            f"{_fmt(s[size]['mirrored_2_vs_single'], 3)} | (overhead) |"
        )
    return "\n".join(lines)
