// A program outside the hgad tree that finds the installed package with find_package(hgad).
#include <hgad/hgad.hpp>

int main() {
  hgad::Rng rng(1);
  auto x = hgad::Tensor<double>::randn({4, 3}, rng);
  return x.shape() == hgad::Shape{4, 3} ? 0 : 1;
}
