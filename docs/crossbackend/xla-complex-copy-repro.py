# torch-xla 2.9.0 (PJRT CPU): copying a complex tensor from the XLA device to the CPU drops its imaginary parts.
# Its real view copies correctly, so the values on the device are right: the loss is in the transfer.
import torch
import torch_xla

device = torch_xla.device()
z = torch.complex(torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 3.0], dtype=torch.float64))
on_device = z.to(device) * 1  # any complex result of a device computation
copied = on_device.cpu()
via_real_view = torch.view_as_complex(torch.view_as_real(on_device).cpu())
print("expected      ", z)
print(".cpu()        ", copied)
print("real view copy", via_real_view)
print("verdict:", "diverges in the copy to the host" if not torch.equal(copied, z) else "agrees")
