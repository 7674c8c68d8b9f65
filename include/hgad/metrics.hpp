#pragma once
/// \file
/// The evaluation metrics of docs/algorithm.md §6: AUROC, average precision and F1-max (scikit-learn's
/// definitions, ties included), AUPRO@0.3 with 8-connected regions, connected-component labelling,
/// and evaluate_class, which computes all of them for one product class.

#include "metrics/aupro.hpp"
#include "metrics/connected_components.hpp"
#include "metrics/evaluate.hpp"
#include "metrics/ranking.hpp"
