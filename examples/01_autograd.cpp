// 01_autograd: fit y = sin(x) with a two-layer perceptron, trained by hgad's reverse-mode autograd.
#include <hgad/hgad.hpp>

#include <cmath>
#include <cstdio>

int main() {
  using V = hgad::Var<float>;
  hgad::Rng rng(0);
  auto x = hgad::Tensor<float>::uniform({256, 1}, rng, -3, 3);  // inputs (N, 1)
  hgad::Tensor<float> t({256, 1});                              // targets sin(x) (N, 1)
  for (hgad::Index i = 0; i < 256; ++i) t(i, 0) = std::sin(x(i, 0));
  auto w1 = V::parameter(hgad::Tensor<float>::randn({1, 32}, rng));
  auto b1 = V::parameter(hgad::Tensor<float>::zeros({32}));
  auto w2 = V::parameter(hgad::Tensor<float>::randn({32, 1}, rng, 0, 0.2f));
  auto b2 = V::parameter(hgad::Tensor<float>::zeros({1}));
  for (int step = 0; step <= 2000; ++step) {
    auto h = hgad::tanh(hgad::matmul(V(x), w1) + b1);                       // (N, 32)
    auto loss = hgad::mean(hgad::square(hgad::matmul(h, w2) + b2 - V(t)));  // ()
    for (V* p : {&w1, &b1, &w2, &b2}) p->zero_grad();
    loss.backward();  // fills p->grad()
    for (V* p : {&w1, &b1, &w2, &b2}) p->value().as_vector() -= 0.02f * p->grad().as_vector();
    if (step % 500 == 0) std::printf("step %4d  mse %.5f\n", step, loss.item());
  }
}
