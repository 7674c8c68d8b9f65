// The one Catch2 main of the hgad test suite.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
