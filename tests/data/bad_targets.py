"""Targets that must make `gradaudit run` exit 2 with one line on stderr."""
import torch


def raises():
    raise ValueError("the factory is broken")


def wrong_shape():
    return torch.sin


def no_floating_inputs():
    return (lambda n: n * 2), (torch.arange(4),)


def nan_input():
    return torch.sin, (torch.tensor([1.0, float("nan")], dtype=torch.float64),)


def inf_output():
    return (lambda x: x / 0), (torch.ones(3, dtype=torch.float64),)


def case_raises():
    return (lambda x: x @ x), (torch.ones(2, 3, dtype=torch.float64),)


not_callable = 42
