import torch
def f(arg0, arg1, arg2):
    output = torch.index_reduce(arg0, 0, arg1, arg2, 'amin', include_self = True);  arg0 = arg1 = arg2 = None
    return (output,)

torch.manual_seed(0)
args = [(torch.rand((), dtype=torch.float32) + 0.5).requires_grad_(),
        torch.tensor([0], dtype=torch.int64),
        (torch.randn((), dtype=torch.float32)).requires_grad_()]
compiled = torch.compile(f, backend='inductor', dynamic=False)
expected, got = f(*args), compiled(*args)
rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
forward_gap = max(rel(a, b) for a, b in zip(got, expected))
wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
v = [torch.randn_like(e) for e in expected]
grads = lambda outs: torch.autograd.grad(outs, wrt, v, allow_unused=True, materialize_grads=True)
backward_gap = max(rel(a, b) for a, b in zip(grads(got), grads(expected))) if wrt else 0.0
print(f'forward: {forward_gap:.3g}  gradient: {backward_gap:.3g} (relative, compiled vs eager)')
