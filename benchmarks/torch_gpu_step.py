#!/usr/bin/env python3
"""The HGAD level of bench_gpu.cu in PyTorch eager float32 on the GPU, as the authors' code runs it.

One feature level (docs/algorithm.md §2-§4): 12 AllInOne coupling blocks (D = 200, P = 256, subnet
356 -> 712 -> 200, soft clamp alpha tanh(0.1 a), SOFTPLUS global affine, fixed rotation), the
hierarchical Gaussian-mixture prior (K = 15, M = 10), the five loss terms of stage 2 with the
official code's expanded squared distances, and Adam (betas 0.95 / 0.99, weight decay 1e-4 on the
flow, gradients reset to None). Measures

  * the training step at N = 32768 (8 images x 64 x 64), vectors/s and peak memory;
  * inference (flow + both scores) of the three-level pyramid of a 1024^2 image
    (64^2 + 32^2 + 16^2 = 5376 vectors), images/s.

TF32 is disabled (torch.backends.cuda.matmul.allow_tf32 = False, PyTorch's default since 1.12),
so the GEMMs are full float32 like bench_gpu's. Self-contained: the repository is all that the GPU
machine has. Prints readable lines and one line "TORCH_GPU_JSON {...}".

  python3 benchmarks/torch_gpu_step.py [--steps 10] [--batches 10] [--images-per-batch 8]
"""

import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as error:  # the summary of gpu_check.sh reports this
    print(f"torch_gpu_step: PyTorch is not installed ({error})")
    print("TORCH_GPU_JSON " + json.dumps({"device": None, "error": "no torch"}))
    sys.exit(0)

C0 = -0.9189385332046727                      # ln(1 / sqrt(2 pi)), docs/algorithm.md §3.3
GAMMA0 = 2.0 * math.log(math.exp(5.0) - 1.0)  # 0.1 softplus_0.5(GAMMA0) = 1, §2.2 step 7


def positional_encoding(P, h, w):
    """(h w, P) sin/cos encoding of integer positions, rows in row-major map order (§1.4)."""
    half = P // 2
    k = torch.arange(0, half, 2, dtype=torch.float64)
    omega = torch.exp(-k * (math.log(1e4) / half))
    ax = torch.arange(w, dtype=torch.float64)[:, None] * omega[None]
    ay = torch.arange(h, dtype=torch.float64)[:, None] * omega[None]
    pe = torch.zeros(h, w, P, dtype=torch.float64)
    pe[:, :, 0:half:2] = torch.sin(ax)[None]
    pe[:, :, 1:half:2] = torch.cos(ax)[None]
    pe[:, :, half::2] = torch.sin(ay)[:, None]
    pe[:, :, half + 1::2] = torch.cos(ay)[:, None]
    return pe.reshape(h * w, P).float()


class Block(nn.Module):
    """FrEIA's AllInOneBlock as HGAD configures it (§2.1-2.2)."""

    def __init__(self, D, P, alpha=1.9):
        super().__init__()
        self.n1, self.n2, self.alpha = D - D // 2, D // 2, alpha
        hin = self.n1 + P
        self.fc1 = nn.Linear(hin, 2 * hin)
        self.fc2 = nn.Linear(2 * hin, 2 * self.n2)
        self.gamma = nn.Parameter(torch.full((D,), GAMMA0))
        self.offset = nn.Parameter(torch.zeros(D))
        q, r = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))[None]
        if torch.det(q) < 0:
            q[:, 0] = -q[:, 0]
        self.register_buffer("rot", q.float())

    def forward(self, x, c):
        x1, x2 = x[:, :self.n1], x[:, self.n1:]
        a = 0.1 * self.fc2(F.relu(self.fc1(torch.cat([x1, c], 1))))
        s = self.alpha * torch.tanh(a[:, :self.n2])
        u = torch.cat([x1, x2 * torch.exp(s) + a[:, self.n2:]], 1)
        g = 0.1 * F.softplus(self.gamma, beta=0.5)
        return F.linear(u * g + self.offset, self.rot), s.sum(1) + torch.log(g).sum()


class Level(nn.Module):
    def __init__(self, D=200, P=256, blocks=12, K=15, M=10):
        super().__init__()
        self.D, self.K = D, K
        self.blocks = nn.ModuleList([Block(D, P) for _ in range(blocks)])
        mu = torch.zeros(K, D)
        scale = 5.0 / math.sqrt((2 * D) // K)
        for b in range(D // K):
            mu[:, b * K:(b + 1) * K] = scale * torch.eye(K)
        self.mu = nn.Parameter(mu)
        self.delta = nn.Parameter(torch.randn(K, M - 1, D))
        self.phi_intra = nn.Parameter(torch.zeros(K, M))
        self.phi_inter = nn.Parameter(torch.zeros(K))

    def flow(self, x, c):
        ld = x.new_zeros(x.shape[0])
        for b in self.blocks:
            x, l = b(x, c)
            ld = ld + l
        return x, ld

    @staticmethod
    def sqdist(z, c):
        """|z - c|^2 in the official code's expanded form; c (C, D) or per-row (N, C, D)."""
        if c.dim() == 2:
            return (z * z).sum(1, keepdim=True) - 2.0 * z @ c.t() + (c * c).sum(1)[None]
        return (z * z).sum(1, keepdim=True) - 2.0 * torch.bmm(c, z[:, :, None])[:, :, 0] + (c * c).sum(2)

    def intra_lse(self, z, labels):
        mu = self.mu.detach()[:, None]
        centres = torch.cat([mu, mu + self.delta], 1)[labels]            # (N, M, D)
        logw = torch.log_softmax(self.phi_intra, 1)[labels]              # (N, M)
        return torch.logsumexp(-0.5 * self.sqdist(z, centres) + logw, 1)

    def loss(self, x, c, labels, q):
        """Stage 2: lambda1 L_g - lambda2 L_mi + L_e + L_g_intra + L_z (§3.3-3.4)."""
        z, ld = self.flow(x, c)
        D = self.D
        d = self.sqdist(z, self.mu)
        logpi = torch.log_softmax(self.phi_inter, 0)
        l_g = ((-torch.logsumexp(-0.5 * d + logpi, 1) - ld) / D).mean()
        lp = logpi.detach()
        l_mi = (q * (torch.log_softmax(-0.5 * d + lp, 1) - lp)).sum(1).mean()
        ls = torch.log_softmax(-0.5 * d, 1)
        l_e = (-(ls.exp() * ls).sum(1)).mean()
        S = self.intra_lse(z, labels)
        l_gi = ((-S - ld) / D).mean()
        l_z = F.softplus(-(D * C0 + S + ld) / D).mean()
        return 1.0 * l_g - 100.0 * l_mi + l_e + l_gi + l_z

    @torch.no_grad()
    def score(self, x, c, labels):
        z, ld = self.flow(x, c)
        logp = (self.D * C0 + self.intra_lse(z, labels) + ld) / self.D
        ls = torch.log_softmax(-0.5 * self.sqdist(z, self.mu), 1)
        return logp, (ls.exp() * ls).sum(1)


def make_adam(level):
    flow = [p for b in level.blocks for p in b.parameters()]
    return torch.optim.Adam([{"params": flow, "weight_decay": 1e-4},
                             {"params": [level.mu, level.delta], "weight_decay": 0.0},
                             {"params": [level.phi_intra, level.phi_inter], "weight_decay": 0.0}],
                            lr=2e-4, betas=(0.95, 0.99), eps=1e-8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--images-per-batch", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to try the script on small sizes")
    ap.add_argument("--small", action="store_true", help="one 16 x 16 image per step (a functional check)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_gpu_step: no CUDA device visible to PyTorch")
        print("TORCH_GPU_JSON " + json.dumps({"device": None, "torch": torch.__version__}))
        return
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"device: {name}, torch {torch.__version__}")

    B, h, w, K = (1, 16, 16, 15) if a.small else (8, 64, 64, 15)
    N = B * h * w
    level = Level().to(dev)
    adam = make_adam(level)
    x = torch.randn(N, 200, device=dev)
    pos = positional_encoding(256, h, w).to(dev).repeat(B, 1)
    labels = (torch.arange(N, device=dev) // (h * w)) % K
    q = F.one_hot(labels, K).float() * 0.98 + 0.02 / K              # label smoothing 0.02 (§3.2)

    def step():
        adam.zero_grad(set_to_none=True)
        loss = level.loss(x, pos, labels, q)
        loss.backward()
        adam.step()
        return loss

    for _ in range(2):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - t0) / a.steps
    train_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(f"torch train step, level 0 (N = {N}, stage 2): {step_s * 1e3:.3f} ms, {N / step_s:.0f} vectors/s, "
          f"peak memory {train_peak:.2f} GiB, loss {float(loss):.4f}")
    del x, pos, q

    # Inference: three levels of one 1024^2 image pyramid, `images_per_batch` images at once.
    I = a.images_per_batch
    sizes = [(16, 16), (8, 8), (4, 4)] if a.small else [(64, 64), (32, 32), (16, 16)]
    levels = [(level, *sizes[0]), (Level().to(dev), *sizes[1]), (Level().to(dev), *sizes[2])]
    inputs = []
    for lv, hh, ww in levels:
        n = I * hh * ww
        inputs.append((lv, torch.randn(n, 200, device=dev), positional_encoding(256, hh, ww).to(dev).repeat(I, 1),
                       torch.full((n,), 3, dtype=torch.long, device=dev)))

    def infer():
        for lv, xx, pp, ll in inputs:
            lv.score(xx, pp, ll)
        sync()

    infer()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(a.batches):
        infer()
    batch_s = (time.perf_counter() - t0) / a.batches
    infer_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    vectors = sum(hh * ww for _, hh, ww in levels)
    print(f"torch inference (3 levels, {vectors} vectors per image, {I} images per batch): {batch_s * 1e3:.3f} ms per "
          f"batch, {I / batch_s:.1f} images/s, peak memory {infer_peak:.2f} GiB")
    print("TORCH_GPU_JSON " + json.dumps({
        "device": name, "torch": torch.__version__, "train_N": N, "train_ms": step_s * 1e3,
        "train_vectors_per_s": N / step_s, "train_peak_gib": train_peak, "infer_images_per_batch": I,
        "infer_ms_per_batch": batch_s * 1e3, "infer_images_per_s": I / batch_s, "infer_peak_gib": infer_peak}))


if __name__ == "__main__":
    main()
