"""Draws the benchmark plots from bench/results.json (written by `wipgate-bench`).

Usage: python bench/plot.py [RESULTS_JSON [OUT_DIR]]   (`make bench` runs it)
Writes overhead.png, shape_<key>.png per bottleneck shape (goodput, admitted p99 and
rejections by offered load, every setup), shift.png (the capacity shift over time, limits
against the true knee), steady.png (limits at steady overload against the knee),
noisy_tenant.png and, when the bounded wait was measured, queue.png next to the results.
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
    "Envoy circuit breaker + pending queue": "#ff7f0e",
    "wipgate static, no queue": "#8c564b",
    "wipgate static + queue": "#2ca02c",
    "wipgate adaptive + queue": "#17becf",
}


KNEE_COLOR = "#444444"


def save(fig, out, name, title):
    """Titles `fig`, writes it to OUT/NAME and frees it."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


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
    save(fig, out, "overhead.png", "Overhead: unconstrained upstream")


def shape(sw, out):
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for s in sw["setups"]:
        m = [p["mult"] for p in s["points"]]
        col = COLORS.get(s["name"])
        a.plot(m, [p["goodput"] for p in s["points"]], "o-", color=col, label=s["name"])
        ok = [(p["mult"], p["ok_p99_ms"]) for p in s["points"] if p["ok"] > 0]
        b.plot([x for x, _ in ok], [max(v, 1e-3) for _, v in ok], "o-", color=col, label=s["name"])
        c.plot(m, [p["reject_rate"] * 100 for p in s["points"]], "o-", color=col, label=s["name"])
    a.axhline(0.95, ls=":", color="grey")
    a.set_title("goodput (fraction of capacity)")
    a.set_ylim(0, 1.15)
    b.set_yscale("log")
    b.set_title("admitted p99 (ms, log)")
    c.set_title("rejected (% of sent)")
    for ax in (a, b, c):
        ax.set_xscale("log")
        ticks = sw["multipliers"]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("offered load (x capacity)")
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    save(fig, out, f"shape_{sw['key']}.png",
         f"{sw['title']}: capacity {sw['capacity_rps']:.0f} req/s, C = {sw['c']}")


def knee_band(ax, knee, band, t_end, limits):
    """The true knee and its band; the y axis stops at 4x the knee so the band stays
    readable (a limit above it, e.g. adaptive_concurrency's first samples, is clipped)."""
    ax.axhline(knee, color=KNEE_COLOR, ls="--", lw=1, label=f"true knee ({knee})")
    ax.axhspan(knee * (1 - band), knee * (1 + band), color=KNEE_COLOR, alpha=0.08,
               label=f"knee ± {band * 100:.0f}%")
    ax.set_xlim(0, t_end)
    top = 4 * knee
    ax.set_ylim(0, top)
    if any(v > top for v in limits):
        ax.text(0.01, 0.97, f"clipped at {top}", transform=ax.transAxes, va="top", fontsize=8,
                color="grey")


def shift(r, out):
    sh = r["shift"]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    end = sh["run_s"]
    for s in sh["setups"]:
        run = s["run"]
        col = COLORS.get(s["name"])
        a.plot(run["t"], run["goodput"], color=col, lw=1, label=s["name"])
        b.plot(run["t"], [max(v, 0.1) for v in run["inflight"]], color=col, lw=1, label=s["name"])
        if run["limit"]:
            c.step(run["limit_t"], run["limit"], where="post", color=col, label=s["name"])
    cap = 1 / sh["slowdown"]
    a.step([0, sh["slow_from_s"], sh["slow_to_s"], end], [1, cap, 1, 1], where="post",
           color="grey", ls=":", label="capacity")
    a.set_ylabel("goodput (x capacity before the shift)")
    a.set_ylim(0, 1.3)
    a.legend(fontsize=8, loc="upper right", ncol=2)
    b.set_yscale("log")
    b.axhline(sh["knee"], color=KNEE_COLOR, ls="--", lw=1)
    b.set_ylabel("upstream in flight (100 ms mean, log)")
    knee_band(c, sh["knee"], sh["band"], end, [v for s in sh["setups"] for v in s["run"]["limit"]])
    c.set_ylabel("limit (sampled every 100 ms)")
    c.set_xlabel("seconds since the load started")
    c.legend(fontsize=8, loc="upper right")
    for ax in (a, b, c):
        for x in (sh["slow_from_s"], sh["slow_to_s"]):
            ax.axvline(x, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    save(fig, out, "shift.png",
         f"c. Capacity shift: collapsing bottleneck at {sh['mult']:g}x, service time x"
         f"{sh['slowdown']:g} from {sh['slow_from_s']:g} s to {sh['slow_to_s']:g} s")


def steady(r, out):
    shapes = r["steady"]
    if not shapes:
        return
    fig, axes = plt.subplots(len(shapes), 1, figsize=(11, 3.6 * len(shapes)), squeeze=False)
    for ax, st in zip(axes[:, 0], shapes):
        for s in st["setups"]:
            run = s["run"]
            ax.step(run["limit_t"], run["limit"], where="post", color=COLORS.get(s["name"]),
                    label=f"{s['name']} (goodput {s['goodput']:.2f})")
        knee_band(ax, st["knee"], st["band"], st["run_s"],
                  [v for s in st["setups"] for v in s["run"]["limit"]])
        ax.set_ylabel("limit")
        ax.set_title(f"{st['title']} at {st['mult']:g}x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the load started (limit sampled every 100 ms)")
    save(fig, out, "steady.png", "Steady overload: moving limits against the true knee")


def noisy(r, out):
    n = r["noisy"]
    setups = n["setups"]
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
    save(fig, out, "noisy_tenant.png",
         f"Noisy tenant: {n['rate']:.0f} req/s in all, 1 tenant at 10x")


def queue(r, out):
    """The bounded wait: Poisson goodput and admitted p99 by load, the noisy tenant's normal
    tenants, and retries offered against the spare capacity over time."""
    q = r.get("queue")
    if not q:
        return
    sw = q["poisson"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (a, b), (c, d) = axes
    unloaded = None
    for s in sw["setups"]:
        pts = s["points"]
        if s["name"] == "no protection":
            unloaded = next((p["ok_p99_ms"] for p in pts if abs(p["mult"] - 0.5) < 1e-9), None)
            continue
        col = COLORS.get(s["name"])
        m = [p["mult"] for p in pts]
        a.plot(m, [p["goodput"] for p in pts], "o-", color=col, label=s["name"])
        ok = [(p["mult"], p["ok_p99_ms"]) for p in pts if p["ok"] > 0]
        b.plot([x for x, _ in ok], [v for _, v in ok], "o-", color=col, label=s["name"])
    a.axhline(0.97, ls=":", color="grey", label="0.97 (2x-10x target)")
    a.axhline(0.95, ls="--", color="grey", lw=0.8, label="0.95 (1x target)")
    if q.get("service_ms"):
        ceiling = sw["c"] / (q["service_ms"] / 1000) / sw["capacity_rps"]
        a.axhline(ceiling, ls="-.", color=KNEE_COLOR, lw=0.8,
                  label=f"ceiling at C ({ceiling:.2f}: C / measured service time)")
    a.set_ylim(0, 1.1)
    a.set_title("goodput (fraction of capacity), Poisson arrivals")
    if unloaded is not None:
        b.axhline(unloaded + q["timeout_ms"], ls=":", color="grey",
                  label=f"unloaded p99 + timeout_ms ({unloaded + q['timeout_ms']:.0f} ms)")
    b.set_yscale("log")
    b.set_title("admitted p99 (ms, log)")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xticks(sw["multipliers"])
        ax.set_xticklabels([f"{t:g}x" for t in sw["multipliers"]])
        ax.minorticks_off()
        ax.set_xlabel("offered load (x capacity)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    n = q["noisy"]
    setups = n["setups"]
    tenants = [t["tenant"] for t in setups[0]["tenants"]] if setups else []
    w = 0.8 / max(len(setups), 1)
    for k, s in enumerate(setups):
        xs = [i + (k - (len(setups) - 1) / 2) * w for i in range(len(tenants))]
        c.bar(xs, [t["success"] * 100 for t in s["tenants"]], w, color=COLORS.get(s["name"]),
              label=s["name"])
    c.axhline(99, ls=":", color="grey")
    c.set_xticks(range(len(tenants)))
    c.set_xticklabels(tenants)
    c.set_ylim(0, 130)
    c.set_title("noisy tenant, no tenants configuration: success per tenant (%)")
    c.legend(fontsize=7, loc="upper center", ncol=2)
    c.grid(alpha=0.3, axis="y")
    rt = q["retry"]
    for s in rt["setups"]:
        col = COLORS.get(s["name"])
        t = [x + rt["bucket_s"] / 2 for x in s["t"]]
        d.plot(t, s["retries_per_s"], "o-", color=col, ms=3,
               label=f"{s['name']}: retries offered "
                     f"(retry-after median {s['retry_after_p50_s']:.0f} s)")
        d.plot(t, s["spare_per_s"], ":", color=col, label=f"{s['name']}: spare capacity")
    d.axhline(rt["capacity_rps"], color=KNEE_COLOR, ls="--", lw=1, label="capacity")
    d.axvline(rt["run_s"], color="grey", ls="--", lw=1)
    d.set_yscale("symlog", linthresh=10)
    d.set_ylim(bottom=0)
    d.set_xlabel("seconds since the load started (first attempts stop at the dashed line)")
    d.set_ylabel("requests per second (log above 10)")
    d.set_title(f"{rt['mult']:g}x overload, clients honour retry-after "
                f"(max {rt['max_retries']} retries)")
    d.legend(fontsize=7)
    d.grid(alpha=0.3)
    save(fig, out, "queue.png",
         f"Bounded wait: timeout_ms {q['timeout_ms']}, collapsing bottleneck, "
         f"C = {sw['c']}, {sw['capacity_rps']:.0f} req/s")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "bench/results.json"
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(path) or "."
    with open(path) as f:
        r = json.load(f)
    overhead(r, out)
    for sw in r["sweeps"]:
        shape(sw, out)
    shift(r, out)
    steady(r, out)
    noisy(r, out)
    queue(r, out)
    print(f"plots written to {out}")


if __name__ == "__main__":
    main()
