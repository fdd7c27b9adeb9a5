"""A suite's stored records of the compile backend are keyed by the compiler (GRADAUDIT_COMPILE_BACKEND), so that
a re-run on another compiler with the same --results-dir never resumes the first compiler's verdicts."""
from __future__ import annotations

from gradaudit.suite.store import backend_versions, record_key


def key_under(monkeypatch, compiler: str | None) -> dict:
    if compiler is None:
        monkeypatch.delenv("GRADAUDIT_COMPILE_BACKEND", raising=False)
    else:
        monkeypatch.setenv("GRADAUDIT_COMPILE_BACKEND", compiler)
    return record_key("torch.ops", "sin[sample 0]", "compile", 1, 0, None, backend_versions("compile"), "z", True)


def test_records_of_two_compilers_have_different_keys(monkeypatch):
    inductor, aot_eager = key_under(monkeypatch, None), key_under(monkeypatch, "aot_eager")
    assert inductor != aot_eager
    assert key_under(monkeypatch, "inductor") == inductor  # the default is inductor
    assert backend_versions("compile")["compiler"] == "inductor"
