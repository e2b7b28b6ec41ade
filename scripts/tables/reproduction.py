"""Tables of docs/reproduction.md, from the study rows under docs/results/ (data-scale, compute, mpp)."""

from rows import load, num, pct, table


def data_scale() -> str:
    """Section 3: one row per cell of the data-scale study, in the grid's order."""
    body = [(r["model"], f"{round(100 * r['fraction'])} % ({r['pretrain_images']:,})", pct(r["top1"]),
             pct(r["fewshot"]["5"], 1), pct(r["fewshot"]["10"], 1), f"{num(r['seconds'])} s")
            for r in load("data-scale/results.json")]
    return table(["model", "pre-training images", "Tiny ImageNet top-1", "CIFAR-10 5-shot", "10-shot", "wall"],
                 body)


def mpp() -> str:
    """Section 5: the three arms of the mpp study."""
    names = {"mpp": "masked patch prediction", "supervised": "supervised", "scratch": "from scratch"}
    body = []
    for r in load("mpp/results.json"):
        pre = "none" if not r["steps"] else f"{r['steps']} steps of {r['batch_size']}, {r['pretrain_flops']:.3g} FLOPs"
        top1 = pct(r["top1"]) if r["top1"] is not None else (
            f"- (colour top-1 {pct(r['mpp_top1'], 1)})" if r.get("mpp_top1") is not None else "-")
        body.append((names[r["arm"]], pre, top1, pct(r["fewshot"]["5"], 1), pct(r["fewshot"]["10"], 1),
                     pct(r["finetune_top1"]), f"{num(r['seconds'])} s"))
    return table(["arm", "pre-training", "Tiny ImageNet top-1", "5-shot", "10-shot", "fine-tuned top-1", "wall"],
                 body)


TABLES = {"reproduction.data_scale": data_scale, "reproduction.mpp": mpp}
