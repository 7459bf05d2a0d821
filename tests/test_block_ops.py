"""The DiT block's per-token ops together (time embeddings -> norm + modulate -> gated residual):
torch.compile of the whole path against eager, the PyTorch fallback against the kernels, and backward
sums that do not depend on the thread count."""
import torch

from imm_ext.ops import embedding_ops, gate_residual, norm_modulate, norm_ops, residual_ops, timestep_embedding_pair

from conftest import norm_inputs, seeded_data, seeded_times, value_and_grads


def _block(x, shift, scale, gate, c_t, c_s):
    """The per-token path of a DiT block: embeddings -> modulated norm -> gated residual."""
    e_t, e_s = timestep_embedding_pair(c_t, c_s, x.shape[-1])
    h = norm_modulate(x, shift + e_t, scale, norm="layer")
    return gate_residual(x, gate * e_s, h.square()).sum()


def test_torch_compile_fullgraph_matches_eager():
    inputs = (*norm_inputs((2, 40, 8), torch.float32, 32), seeded_data((2, 8), torch.float32, 33), seeded_times(2, 34),
              seeded_times(2, 35))
    cotangent = torch.tensor(1.0)
    want, want_grads = value_and_grads(_block, inputs, cotangent)
    got, got_grads = value_and_grads(torch.compile(_block, fullgraph=True), inputs, cotangent)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)



def test_fallback_path_matches_kernels(monkeypatch):
    inputs = (*norm_inputs((2, 40, 8), torch.float32, 36), seeded_data((2, 8), torch.float32, 37), seeded_times(2, 38),
              seeded_times(2, 39))
    cotangent = torch.tensor(1.0)
    kernel = value_and_grads(_block, inputs, cotangent)
    for module in (embedding_ops, norm_ops, residual_ops):
        monkeypatch.setattr(module, "has_kernel", lambda t: False)
    fallback = value_and_grads(_block, inputs, cotangent)
    torch.testing.assert_close(fallback[0], kernel[0])
    for g, w in zip(fallback[1], kernel[1]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)  # float32 block: c's gradients too


def test_backward_is_deterministic_across_thread_counts():
    inputs = (*norm_inputs((3, 100, 24), torch.float32, 40), seeded_data((3, 24), torch.float32, 41))
    cotangent = seeded_data((3, 100, 24), torch.float32, 42)

    def grads():
        x, shift, scale, gate = (t.clone().requires_grad_() for t in inputs)
        out = gate_residual(x, gate, norm_modulate(x, shift, scale))
        return torch.autograd.grad(out, (x, shift, scale, gate), cotangent)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = grads()
        torch.set_num_threads(max(2, threads))
        parallel, again = grads(), grads()
    finally:
        torch.set_num_threads(threads)
    for s, p, a in zip(serial, parallel, again):
        assert torch.equal(s, p) and torch.equal(p, a)

