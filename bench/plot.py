"""Draws the benchmark plots from bench/results.json (written by `wipgate-bench`).

Usage: python bench/plot.py [RESULTS_JSON [OUT_DIR]]   (`make bench` runs it)
Writes overhead.png, overload_summary.png, overload_timeseries_3x.png,
overload_timeseries_5x.png and noisy_tenant.png next to the results.
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "no protection": "#d62728",
    "Envoy circuit breaker": "#ff7f0e",
    "Envoy adaptive_concurrency": "#9467bd",
    "wipgate static": "#2ca02c",
    "wipgate adaptive": "#17becf",
}


def present(setups):
    return [s for s in setups if not s.get("missing")]


def overhead(r, out):
    oh = r["overhead"]
    names = [s["name"] for s in oh["setups"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(names, [s["rps"] for s in oh["setups"]], color=["#7f7f7f", "#1f77b4", "#2ca02c"])
    a.set_title(f"closed loop, {oh['closed_conns']} keep-alive connections")
    a.set_ylabel("requests per second (median)")
    for i, s in enumerate(oh["setups"]):
        a.text(i, s["rps"], f"{s['rps']:.0f}", ha="center", va="bottom")
    x = range(len(names))
    w = 0.25
    for k, (key, label) in enumerate([("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9")]):
        b.bar([i + (k - 1) * w for i in x], [s[key] / 1000 for s in oh["setups"]], w, label=label)
    b.set_xticks(list(x))
    b.set_xticklabels(names)
    b.set_title(f"open loop at {oh['fixed_rate']:.0f} req/s (keep-alive)")
    b.set_ylabel("latency from intended send (ms)")
    b.legend()
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Overhead: unconstrained upstream")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "overhead.png"), dpi=110)
    plt.close(fig)


def overload_summary(r, out):
    ol = r["overload"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for s in present(ol["setups"]):
        m = [p["mult"] for p in s["points"]]
        col = COLORS.get(s["name"])
        a.plot(m, [p["goodput"] for p in s["points"]], "o-", color=col, label=s["name"])
        b.plot(m, [max(p["ok_p99_ms"], 1e-3) for p in s["points"]], "o-", color=col, label=s["name"])
        c.plot(m, [p["reject_rate"] * 100 for p in s["points"]], "o-", color=col, label=s["name"])
    a.axhline(0.95, ls=":", color="grey")
    a.set_title("goodput (fraction of capacity)")
    a.set_ylim(0, 1.1)
    b.set_yscale("log")
    b.set_title("p99 latency of successes (ms, log)")
    c.set_title("rejected (% of sent)")
    for ax in (a, b, c):
        ax.set_xlabel("offered load (x capacity)")
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle("Overload: bottleneck with congestion collapse past C"
                 " (wipgate adaptive: missing, not implemented yet)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "overload_summary.png"), dpi=110)
    plt.close(fig)


def overload_timeseries(r, out, mult):
    ol = r["overload"]
    fig, (a, b) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for s in present(ol["setups"]):
        p = next((p for p in s["points"] if abs(p["mult"] - mult) < 1e-9), None)
        if p is None:
            continue
        ser = p["series"]
        col = COLORS.get(s["name"])
        a.plot(ser["t"], ser["goodput"], color=col, label=s["name"])
        pts = [(t, v) for t, v in zip(ser["t"], ser["ok_p99_ms"]) if v is not None]
        if pts:
            b.plot([t for t, _ in pts], [v for _, v in pts], color=col, label=s["name"])
    a.axhline(1.0, ls=":", color="grey")
    a.set_ylabel("goodput (x capacity), by completion")
    a.set_ylim(0, 1.3)
    a.legend(fontsize=8, loc="upper right")
    b.set_yscale("log")
    b.set_ylabel("p99 of successes (ms, log), by send time")
    b.set_xlabel("seconds since the start of the open loop (100 ms buckets)")
    for ax in (a, b):
        ax.axvline(ol["point_s"], ls="--", color="grey")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Overload at {mult:g}x capacity over time ({ol['capacity_rps'] * mult:.0f} req/s"
                 f" for {ol['point_s']:g} s; dashed: load stops)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"overload_timeseries_{mult:g}x.png"), dpi=110)
    plt.close(fig)


def noisy(r, out):
    n = r["noisy"]
    setups = present(n["setups"])
    tenants = [t["tenant"] for t in setups[0]["tenants"]] if setups else []
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.2))
    w = 0.8 / max(len(setups), 1)
    for k, s in enumerate(setups):
        xs = [i + (k - (len(setups) - 1) / 2) * w for i in range(len(tenants))]
        col = COLORS.get(s["name"])
        a.bar(xs, [t["success"] * 100 for t in s["tenants"]], w, color=col, label=s["name"])
        b.bar(xs, [max(t["ok_p99_ms"], 1e-3) for t in s["tenants"]], w, color=col, label=s["name"])
    for ax in (a, b):
        ax.set_xticks(range(len(tenants)))
        ax.set_xticklabels([f"{t}\n({n['noisy_rate'] if t == 'noisy' else n['normal_rate']:.0f} req/s)"
                            for t in tenants])
        ax.grid(alpha=0.3, axis="y")
    a.set_title("success rate per tenant (%)")
    a.set_ylim(0, 145)
    b.set_yscale("log")
    b.set_title("p99 of successes per tenant (ms, log)")
    a.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(f"Noisy tenant: {n['rate']:.0f} req/s in all, 1 tenant at 10x"
                 " (wipgate adaptive: missing)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "noisy_tenant.png"), dpi=110)
    plt.close(fig)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "bench/results.json"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(path) or "."
    with open(path) as f:
        r = json.load(f)
    overhead(r, out)
    overload_summary(r, out)
    for mult in (3.0, 5.0):
        overload_timeseries(r, out, mult)
    noisy(r, out)
    print(f"plots written to {out}")


if __name__ == "__main__":
    main()
