#pragma once
/// \file
/// hgad: HGAD, the hierarchical Gaussian-mixture normalizing flow for unified anomaly detection
/// (Yao et al., ECCV 2024), as a header-only C++17 library.
///
/// One model learns the normal data of many classes. Each feature level has a conditional
/// normalizing flow (FrEIA AllInOneBlocks on a 2-D positional encoding) that maps feature vectors
/// to latents z, and a hierarchical Gaussian-mixture prior on z: one Gaussian per class (the
/// inter-class level, kept apart by a mutual-information loss) and a mixture of intra-class centres
/// around each. A feature is anomalous when its latent is unlikely under its class's mixture or
/// sits between the class centres (high posterior entropy).
///
///     hgad::ModelConfig config;                          // HGAD's defaults: M = 10, λ2 = 100, clamp 1.9
///     config.levels = {{128, 32, 32}, {256, 16, 16}};    // per level: D, height, width
///     config.class_names = {"kolektor", "magnetic_tile", "pcb1"};
///     hgad::HgadModel<float> model(config);              // valid and untrained
///     model.fit(train_features, train_labels);           // per level (N, H, W, D); labels (N,)
///     model.calibrate(train_features, train_labels);     // constants of the calibrated mode
///     auto scored = model.score(image_features, class_index, hgad::ScoreMode::calibrated);
///     model.save("model.hgad");                          // scored.map: the anomaly map
///
/// Modules: tensor.hpp and backend.hpp (tensors and the device interface), autograd.hpp (Var, ops,
/// gradcheck), flow.hpp (AllInOneBlock, SequenceFlow, positional encoding), prior/ and loss/ (the
/// Gaussian-mixture prior and the loss terms of Eq. 6, 8, 9), nn/ (Adam, the LR schedule), model/
/// (HgadModel, training step, anomaly maps, config, class groups), backbone/ (ResNet features from
/// .npy weights), metrics.hpp (AUROC, AP, F1-max, AUPRO). Image and data-set I/O (io/image.hpp,
/// io/mvtec.hpp, model/pipeline.hpp, which need stb) and the CUDA backend (cuda/, .cu files only)
/// are included separately.

#include "autograd.hpp"
#include "backbone/feature_extractor.hpp"
#include "backbone/resnet.hpp"
#include "backend.hpp"
#include "cpu_backend.hpp"
#include "flow.hpp"
#include "io/checkpoint.hpp"
#include "io/npy.hpp"
#include "loss/fused_loss.hpp"
#include "loss/hgad_loss.hpp"
#include "loss/loss_terms.hpp"
#include "metrics.hpp"
#include "model/anomaly_map.hpp"
#include "model/class_groups.hpp"
#include "model/config.hpp"
#include "model/hgad_model.hpp"
#include "model/train_step.hpp"
#include "nn/adam.hpp"
#include "nn/lr_schedule.hpp"
#include "prior/gaussian_mixture_prior.hpp"
#include "prior/scores.hpp"
#include "rng.hpp"
#include "tensor.hpp"
