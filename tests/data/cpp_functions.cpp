// Small C++ custom autograd Functions (torch::autograd::Function, as torchvision's ops are built) for
// tests/test_extensions.py: torch has no forward-mode AD for any of them ("jvp is not implemented for the c++ API
// of custom Function yet").
#include <torch/extension.h>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x^3 with a backward made of differentiable ops: torch can differentiate it twice.
// ``factor`` is 3 for the right derivative; anything else plants a wrong backward.
struct Cube : public torch::autograd::Function<Cube> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, double factor) {
    ctx->save_for_backward({x});
    ctx->saved_data["factor"] = factor;
    return x * x * x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto x = ctx->get_saved_variables()[0];
    double factor = ctx->saved_data["factor"].toDouble();
    return {grad_outputs[0] * factor * x * x, torch::Tensor()};
  }
};

// The backward of OnceCube: a Function of its own that refuses to be differentiated, as torchvision's
// ROIAlignBackwardFunction does.
struct OnceCubeBackward : public torch::autograd::Function<OnceCubeBackward> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& grad, const torch::Tensor& x) {
    return grad * 3 * x * x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(false, "double backwards on once_cube not supported");
    return {torch::Tensor(), torch::Tensor()};
  }
};

struct OnceCube : public torch::autograd::Function<OnceCube> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x) {
    ctx->save_for_backward({x});
    return x * x * x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto x = ctx->get_saved_variables()[0];
    return {OnceCubeBackward::apply(grad_outputs[0], x)};
  }
};

torch::Tensor cube(const torch::Tensor& x, double factor) { return Cube::apply(x, factor); }
torch::Tensor once_cube(const torch::Tensor& x) { return OnceCube::apply(x); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cube", &cube, "x^3 (the backward multiplies by factor x^2)");
  m.def("once_cube", &once_cube, "x^3 whose backward cannot be differentiated");
}
