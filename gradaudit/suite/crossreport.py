"""The report of a cross-backend suite (``gradaudit suite ZOO --compare``) as Markdown: per backend and dtype, which
cases diverge in the forward, in the gradient, in the second derivative, which the backend does not support, which
crash it, which only lose precision or differ at a kink, with each divergence's localized op and its repro.

Each case's records (one per order) are folded into one row under the most serious category any order gave:
gradaudit error > backend crash > forward > gradient > second derivative > precision > kink > pass, and only
where no order gave a verdict: unsupported > not comparable > not applicable.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gradaudit import registry
from gradaudit.lines import flattened
from gradaudit.suite.records import SuiteRecord, SuiteStatus, as_record

# (key, heading), most serious first: a case is listed under the first that any of its records falls in.
CATEGORIES = [
    ("gradaudit_error", "gradaudit errors (the audit itself failed; must be empty)"),
    ("backend_crash", "Backend crashes (the backend raised or died where eager float64 runs)"),
    ("forward", "Forward divergences"),
    ("gradient", "Gradient divergences (order 1)"),
    ("second", "Second-derivative divergences (order 2 only)"),
    ("precision", "Precision loss (within sqrt(eps) of the result's scale, or eager shows it in the same dtype)"),
    ("kink", "Kink conventions (another one-sided derivative at a non-differentiable point)"),
    ("pass", "Pass"),
    # Only where no order gave a verdict: an order that could not run does not hide another order's pass.
    ("unsupported", "Unsupported on the backend (skipped, with the reason)"),
    ("not_comparable", "Not comparable (random ops, sparse or non-finite inputs, an order eager float64 lacks)"),
    ("not_applicable", "Not applicable (an order the op's OpInfo does not support)"),
]
# Reasons of skips that are about the case or the comparison, not about the backend.
NOT_COMPARABLE = ("draws random numbers", "differentiates dense tensors only", "produced NaN or Inf",
                  "nothing to differentiate", "gradaudit.compare could not run: ", "contains NaN")
SEVERITY = {key: rank for rank, (key, _) in enumerate(CATEGORIES)}
DIVERGENCES = ("backend_crash", "forward", "gradient", "second")


def lower_precision_fallback(record: SuiteRecord) -> str | None:
    """Why an exported graph ran in a lower precision than asked (onnxruntime lacks a float64 kernel), if it did:
    in a float64 report, such a case is unsupported in float64 (its float32 verdict belongs to the float32 one)."""
    for note in (record.report or {}).get("skipped", []):
        if note.get("what", "").endswith("onnx float64"):
            return note.get("reason")
    return None


def category(record: SuiteRecord) -> str:
    """Which category one record falls in."""
    reason = record.reason or ""
    if record.status == SuiteStatus.SKIP and reason.startswith("order ") and "not supported by this case" in reason:
        return "not_applicable"
    if record.status == SuiteStatus.SKIP and any(text in reason for text in NOT_COMPARABLE):
        return "not_comparable"
    if record.status == SuiteStatus.SKIP or lower_precision_fallback(record):
        return "unsupported"
    if record.status == SuiteStatus.ERROR:
        reason = record.reason or ""
        return "backend_crash" if reason.startswith(("crashed:", "timed out")) else "gradaudit_error"
    findings = (record.report or {}).get("findings", [])
    errors = [f for f in findings if f.get("severity") == "error"]
    kinds = {(f.get("kind"), f.get("order")) for f in errors}
    if any(kind == "backend_error" for kind, _ in kinds):
        return "backend_crash"
    if any(kind == "forward_divergence" for kind, _ in kinds):
        return "forward"
    if any(order == 1 for kind, order in kinds if kind == "backward_divergence"):
        return "gradient"
    if errors:
        return "second"
    failed = {c.get("order") for c in (record.report or {}).get("checks", []) if not c.get("ok", True)}
    if record.status == SuiteStatus.FAIL and failed:  # a failed check that only a warning explains (a kink
        # excuse on avg_pool3d, which is linear) is still a divergence, never a convention or a pass
        return "forward" if 0 in failed else "gradient" if 1 in failed else "second"
    warnings = {f.get("kind") for f in findings}
    if any(f.get("status") == "precision_loss" for f in (record.report or {}).get("checks", [])) or \
            "forward_divergence" in warnings or "backward_divergence" in warnings:
        return "precision"
    return "kink" if "nondifferentiable_point" in warnings else "pass"


@dataclass
class CaseRow:
    """One case of the table: its category, the record that put it there and every record's category."""

    case: str
    category: str = "pass"
    record: SuiteRecord | None = None
    orders: dict[int, str] = field(default_factory=dict)


def case_rows(records: list) -> list[CaseRow]:
    """One row per case (in the order the records came), under the most serious category of its orders."""
    rows: dict[str, CaseRow] = {}
    for record in map(as_record, records):
        row = rows.setdefault(record.case, CaseRow(record.case))
        kind = category(record)
        row.orders[record.order] = kind
        if row.record is None or SEVERITY[kind] < SEVERITY[row.category]:  # (not_applicable ranks last)
            row.category, row.record = kind, record
    return list(rows.values())


def main_finding(record: SuiteRecord) -> dict:
    """The finding that names the record's category (the first error, else the first warning), or {}."""
    findings = (record.report or {}).get("findings", [])
    return next((f for f in findings if f.get("severity") == "error"), findings[0] if findings else {})


def what_happened(record: SuiteRecord) -> str:
    """One line: the main finding's message, else the record's reason."""
    finding = main_finding(record)
    text = lower_precision_fallback(record) or finding.get("message") or record.reason or ""
    return flattened(text, 300).replace("|", "\\|")


def localized(record: SuiteRecord) -> str:
    """Where the divergence was localized: the op (and autograd node) that first diverged, or, for an exported
    graph of one op (nothing smaller to blame), that op and the ONNX operators it was exported to."""
    finding = main_finding(record)
    parts = [finding.get("op") or "", f"({finding['node']})" if finding.get("node") and
             finding.get("node") != finding.get("op") else ""]
    exported = finding.get("details", {}).get("exported_ops")
    if not finding.get("op") and exported:
        parts = [f"{record.module or record.case} → ONNX {', '.join(exported[:8])}" + (" …" if len(exported) > 8
                                                                                          else "")]
    return " ".join(p for p in parts if p) or "-"


def op_repro_run(record: SuiteRecord, exception: str | None = None) -> dict:
    """The op's own repro for a ``torch.ops`` record that has none the table can use (a worker killed by a
    signal, a worker built without one, or torch.compile's localized piece, which runs random inputs and prints
    no verdict), run once in a fresh process: it must show the divergence, or fail the way the backend did
    (``exception``, or the signal of ``crashed: signal 8 (SIGFPE)``)."""
    from gradaudit.suite.zoos.op_repro import confirm, confirmation, op_repro

    reason = record.reason or ""
    if record.zoo != "torch.ops":
        return {}
    with warnings.catch_warnings():  # (building torch's op_db warns about beta features)
        warnings.simplefilter("ignore")
        code = op_repro(record.case, record.backend, record.dtype, record.order)
    if code is None:
        return {}
    ran = confirm(code)
    signal = reason.split("(")[-1].rstrip(")") if reason.startswith("crashed: signal") else None
    return {"repro": code, "repro_output": ran[1], "repro_confirmed": confirmation(ran, exception or signal)}


def repro_cell(record: SuiteRecord, repro_dir: Path | None, link_base: str) -> str:
    """The repro's file (written under ``repro_dir``) and whether running it showed the divergence. On
    torch.compile the localized piece's script is written beside it (``-piece.py``), for the compiler's
    developers."""
    details = dict(main_finding(record).get("details", {}))
    # (a backend whose localization attaches the repro of a piece of its graph, not the op's own)
    localized_piece = bool(registry.declaration(record.backend).get("repro_of_localized_piece")) and \
        "localization" in details
    piece = details.pop("repro", None) if localized_piece else None
    if not details.get("repro"):
        details.update(op_repro_run(record, details.get("exception")))
    elif details.get("repro_confirmed") is not True:  # run it once more
        from gradaudit.suite.zoos.op_repro import confirm, confirmation

        details["repro_confirmed"] = confirmation(confirm(details["repro"]), details.get("exception"))
    code = details.get("repro")
    if not code:
        return "-"
    confirmed = {True: "confirmed", False: "not confirmed"}.get(details.get("repro_confirmed"),
                                                                  f"did not run: {details.get('repro_confirmed')}")
    if repro_dir is None:
        return confirmed
    name = repro_file_name(record.case)
    repro_dir.mkdir(parents=True, exist_ok=True)
    (repro_dir / name).write_text(code)
    cell = f"[{name}]({link_base}{name}) {confirmed}"
    if piece:
        piece_name = name.replace(".py", "-piece.py")
        (repro_dir / piece_name).write_text(piece)
        cell += f" ([piece]({link_base}{piece_name}))"
    return cell


def repro_file_name(case: str) -> str:
    return case.replace("[sample ", "-sample").replace("]", "").replace("/", "_") + ".py"


def render_markdown(records: list, title: str, preamble: str = "", repro_dir: Path | None = None,
                    link_base: str = "") -> str:
    """The cross-backend report: a summary of how many cases fall in each category, then a table per
    category (the passing cases as one list)."""
    rows = case_rows(records)
    by_category: dict[str, list[CaseRow]] = defaultdict(list)
    for row in rows:
        by_category[row.category].append(row)
    lines = [f"# {title}", "", preamble.strip(), "", "| category | cases |", "|---|---:|"]
    lines += [f"| {heading.split(' (')[0]} | {len(by_category[key])} |" for key, heading in CATEGORIES]
    lines += [f"| **total** | **{len(rows)}** |", ""]
    for key, heading in CATEGORIES:
        found = by_category[key]
        if not found:
            continue
        lines += [f"## {heading}: {len(found)}", ""]
        if key == "pass":
            lines += [", ".join(f"`{row.case}`" for row in found), ""]
            continue
        with_repro = key in DIVERGENCES
        lines += ["| case | orders | what | localized op | repro |" if with_repro else "| case | orders | what |",
                  "|---|---|---|---|---|" if with_repro else "|---|---|---|"]
        for row in found:
            orders = ", ".join(f"{order}: {kind}" for order, kind in sorted(row.orders.items()))
            cells = [f"`{row.case}`", orders, what_happened(row.record)]
            if with_repro:
                cells += [localized(row.record), repro_cell(row.record, repro_dir, link_base)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def timing(records: list) -> dict[str, float]:
    """Seconds the audits took (the reports' ``stats.seconds``), how much of it their backends spent compiling
    (XLA) or exporting (ONNX) (``stats.compile_seconds``), and the records' seconds in all (with each worker's
    start-up and the repro runs)."""
    records = [as_record(r) for r in records]
    stats = [(r.report or {}).get("stats", {}) for r in records]
    audits = sum(float(s.get("seconds", 0.0) or 0.0) for s in stats)
    compiling = sum(float(s.get("compile_seconds", 0.0) or 0.0) for s in stats)
    return {"audit_seconds": round(audits, 1), "compile_seconds": round(compiling, 1),
            "run_seconds": round(audits - compiling, 1), "record_seconds": round(sum(r.seconds for r in records), 1)}


def backend_label(backend: str) -> str:
    """A backend as the report names it, with the settings it takes from the environment
    (``Backend.environment``): ``compile (inductor)``, ``compile (inductor, mode max-autotune)``."""
    settings = [(name, value) for name, value in registry.backend_environment(backend).items() if value]
    if not settings:
        return backend
    shown = [str(settings[0][1])] + [f"{name} {value}" for name, value in settings[1:]]
    return f"{backend} ({', '.join(shown)})"


def versions() -> str:
    """The versions the report was made with: torch, the packages each registered backend declares
    (``Backend.packages``) where they are installed, and gradaudit."""
    from importlib import metadata

    declared = [package for name in registry.backend_names() for package in registry.backend_packages(name) or ()]
    found = []
    for dist in dict.fromkeys(["torch", *declared, "gradaudit"]):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def write_markdown(records: list, path: str, zoo: str, backends: list[str], dtype: str | None,
                   command: str) -> None:
    """The cross-backend report at ``path``, its repros under ``<path stem>-repros/`` beside it."""
    import datetime
    import os

    target = Path(path)
    repro_dir = target.with_name(f"{target.stem}-repros")
    spent = timing(records)
    title = (f"{zoo} on {', '.join(map(backend_label, backends))} ({dtype or 'float64'}) against eager float64 "
             "on the CPU")
    preamble = "\n".join([
        f"Made with `{command}` on {datetime.date.today().isoformat()} ({os.cpu_count()} CPU cores).", "",
        f"Versions: {versions()}.", "",
        f"Time in the audits: {spent['audit_seconds']} s, of which {spent['compile_seconds']} s compiling (XLA) or "
        "exporting (ONNX; torch.compile's is not counted apart) and "
        f"{spent['run_seconds']} s running and comparing; {spent['record_seconds']} s with "
        "the workers' start-up and the repro runs.", "",
        "Each case is one sample of an op of PyTorch's `op_db`, compared at orders 1 and 2 (forward first) with "
        "eager float64 on the CPU; a case is listed under the most serious thing any order showed. Repros are "
        f"standalone scripts in [{repro_dir.name}/]({repro_dir.name}/), each run in a fresh process: "
        "*confirmed* means running it showed the divergence (or the same crash)."])
    target.write_text(render_markdown(records, title, preamble, repro_dir, f"{repro_dir.name}/"))
