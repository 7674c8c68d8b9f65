#!/usr/bin/env python3
"""Export a torchvision ResNet / WideResNet to hgad's per-tensor .npy layout, batch-norm folded.

For every convolution `<module>` followed by a BatchNorm2d (conv1/bn1, layerX.Y.convK/bnK,
layerX.Y.downsample.0/downsample.1) this writes

    <module>.weight.npy   float32 (O, I, kh, kw)   W' = W * gamma / sqrt(var + eps)
    <module>.bias.npy     float32 (O,)             b' = beta + (b - mean) * gamma / sqrt(var + eps)

(b = 0 for torchvision's bias-free convolutions), the layout hgad::ResNet reads
(include/hgad/backbone/resnet.hpp; ../shared/weights/resnet18-imagenet/README.md). The classifier
(fc) is not exported.

Run it with a Python that has torch, torchvision and numpy (Debian: /usr/bin/python3 with
python3-torch and python3-torchvision).

Examples:
    # your own fine-tuned weights (a state_dict, or a checkpoint holding one under 'state_dict')
    python3 tools/export_torchvision_resnet.py --arch wide_resnet50_2 --weights wrn50.pth --out weights/wrn50
    # torchvision's ImageNet weights (downloads them; needs network access)
    python3 tools/export_torchvision_resnet.py --arch resnet18 --pretrained --out weights/resnet18
    # a randomly initialised network with random BN statistics, plus PyTorch's activations on an
    # input saved as .npy (N, 3, H, W): <reference-dir>/{stem,layer1,...}.npy, for testing
    python3 tools/export_torchvision_resnet.py --arch resnet50 --random --seed 0 --random-bn \\
        --out /tmp/w --reference-input /tmp/x.npy --reference-dir /tmp/ref
"""

import argparse
import os
import sys

import numpy as np
import torch
import torchvision

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2"]
STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def build_model(args):
    constructor = getattr(torchvision.models, args.arch)
    if args.pretrained:
        model = constructor(weights="DEFAULT")
    else:
        torch.manual_seed(args.seed)
        model = constructor(weights=None)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            sys.exit(f"export: {args.weights} lacks {len(missing)} tensors of {args.arch}, e.g. {missing[:3]}")
        if unexpected:
            print(f"export: ignoring {len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}", file=sys.stderr)
    if args.random_bn:
        # Random but well-conditioned statistics, so that the folding is exercised.
        generator = torch.Generator().manual_seed(args.seed + 1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.data = 0.5 + torch.rand(n, generator=generator)
                module.bias.data = 0.2 * torch.randn(n, generator=generator)
                module.running_mean = 0.2 * torch.randn(n, generator=generator)
                module.running_var = 0.5 + torch.rand(n, generator=generator)
    return model.eval()


def conv_bn_pairs(model, last_stage):
    """(conv name, conv, bn) for every conv of the stem and layer1..last_stage, in forward order."""
    modules = dict(model.named_modules())
    depth = STAGES.index(last_stage)
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        if name.startswith("layer") and int(name[5]) > depth:
            continue
        if name == "conv1":
            bn_name = "bn1"
        elif name.endswith("downsample.0"):
            bn_name = name[: -len("0")] + "1"
        else:
            parent, _, leaf = name.rpartition(".")
            bn_name = f"{parent}.bn{leaf[len('conv'):]}"
        bn = modules.get(bn_name)
        if not isinstance(bn, torch.nn.BatchNorm2d):
            sys.exit(f"export: no BatchNorm2d '{bn_name}' after convolution '{name}'")
        pairs.append((name, module, bn))
    return pairs


def fold(conv, bn):
    """W' = W gamma / sqrt(var + eps), b' = beta + (b - mean) gamma / sqrt(var + eps), in float64."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    w_folded = w * scale.reshape(-1, 1, 1, 1)
    b_folded = bn.bias.detach().double() + (b - bn.running_mean.double()) * scale
    return w_folded.float().numpy(), b_folded.float().numpy()


@torch.no_grad()
def reference_outputs(model, x, last_stage):
    """PyTorch's activations in float64: stem (after the max-pool) and layer1..last_stage."""
    model = model.double()
    h = model.maxpool(model.relu(model.bn1(model.conv1(torch.from_numpy(x).double()))))
    outputs = {"stem": h}
    for stage in STAGES[1 : STAGES.index(last_stage) + 1]:
        h = getattr(model, stage)(h)
        outputs[stage] = h
    return {k: v.numpy().astype(np.float32) for k, v in outputs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--out", required=True, help="output folder of the .npy files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="a state_dict (.pth) of the same architecture")
    source.add_argument("--pretrained", action="store_true", help="torchvision's default ImageNet weights")
    source.add_argument("--random", action="store_true", help="torchvision's random initialisation")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random and --random-bn")
    parser.add_argument("--random-bn", action="store_true", help="randomise the BatchNorm parameters and statistics")
    parser.add_argument("--up-to", default="layer4", choices=STAGES[1:], help="last stage exported (default layer4)")
    parser.add_argument("--reference-input", help="an (N, 3, H, W) float32 .npy input to run PyTorch on")
    parser.add_argument("--reference-dir", help="folder for PyTorch's <stage>.npy activations")
    args = parser.parse_args()
    if bool(args.reference_input) != bool(args.reference_dir):
        parser.error("--reference-input and --reference-dir go together")

    model = build_model(args)
    os.makedirs(args.out, exist_ok=True)
    n_params = 0
    for name, conv, bn in conv_bn_pairs(model, args.up_to):
        w, b = fold(conv, bn)
        np.save(os.path.join(args.out, f"{name}.weight.npy"), w)
        np.save(os.path.join(args.out, f"{name}.bias.npy"), b)
        n_params += w.size + b.size
    print(f"export: {args.arch} up to {args.up_to}: {n_params} parameters written to {args.out}")

    if args.reference_input:
        x = np.load(args.reference_input).astype(np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            sys.exit(f"export: reference input {args.reference_input} has shape {x.shape}, expected (N, 3, H, W)")
        os.makedirs(args.reference_dir, exist_ok=True)
        for stage, value in reference_outputs(model, x, args.up_to).items():
            np.save(os.path.join(args.reference_dir, f"{stage}.npy"), value)


if __name__ == "__main__":
    main()
