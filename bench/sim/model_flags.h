// Flags of the stand-alone models (threshold_model, lookahead_model): every
// flag is --name=number, and the defaults name the flags there are.
#ifndef MATCHD_BENCH_SIM_MODEL_FLAGS_H_
#define MATCHD_BENCH_SIM_MODEL_FLAGS_H_

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace matchd::sim {

// Sets `flags` from argv; false (having said why on stderr) on an argument
// that is not --name=value with a known name.
inline bool ParseModelFlags(int argc, char** argv, const char* program,
                            std::map<std::string, double>* flags) {
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    const size_t eq = arg.find('=');
    const std::string name =
        arg.rfind("--", 0) == 0 && eq != std::string::npos ? arg.substr(2, eq - 2) : "";
    if (!flags->count(name)) {
      std::fprintf(stderr, "%s: unknown argument %s (see the source's header)\n", program,
                   argv[a]);
      return false;
    }
    (*flags)[name] = std::atof(arg.c_str() + eq + 1);
  }
  return true;
}

}  // namespace matchd::sim

#endif  // MATCHD_BENCH_SIM_MODEL_FLAGS_H_
