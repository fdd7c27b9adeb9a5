"""Where a torch.compile defect of a ``torch.ops`` case enters: its op repro (the exact op_db sample, compiled vs
eager float64) run in a fresh process with each compiler in turn. ``aot_eager`` is dynamo and AOTAutograd only,
``aot_eager_decomp_partition`` adds inductor's decompositions and min-cut partitioner, ``inductor`` its lowering
and code generation; the first that diverges or raises is where the defect first appears.

    python docs/crossbackend/compile-bisect.py float64 'index_reduce.amin[sample 0]' ...

prints one JSON line per case: {case: {"first": compiler or null, compiler: verdict, ...}}.
"""
from __future__ import annotations

import json
import os
import sys
import warnings

COMPILERS = ("aot_eager", "aot_eager_decomp_partition", "inductor")


def verdict(case: str, compiler: str, dtype: str | None) -> str:
    """'agrees', 'diverges' or 'raises: <exception line>' of the case's op repro on ``compiler``."""
    from gradaudit.suite.zoos.op_repro import confirm, op_repro

    os.environ["GRADAUDIT_COMPILE_BACKEND"] = compiler  # (op_repro writes the compiler into the script)
    diverges, output = confirm(op_repro(case, "compile", dtype, 1))
    return {True: "diverges", False: "agrees"}.get(diverges, "raises: " + output.splitlines()[-1][:160])


def bisect(case: str, dtype: str | None) -> dict:
    row = {compiler: verdict(case, compiler, dtype) for compiler in COMPILERS}
    return {"first": next((c for c in COMPILERS if row[c] != "agrees"), None), **row}


def main(argv: list[str]) -> None:
    dtype = None if argv[0] == "float64" else argv[0]
    for case in argv[1:]:
        print(json.dumps({case: bisect(case, dtype)}), flush=True)


if __name__ == "__main__":
    warnings.simplefilter("ignore")  # (building op_db warns about beta features)
    main(sys.argv[1:])
