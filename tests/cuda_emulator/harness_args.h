#pragma once
// A harness's key=value arguments.
#include <map>
#include <string>

#include "emulator.h"

namespace harness {

inline std::map<std::string, std::string>& args() {
  static std::map<std::string, std::string> a;
  return a;
}

inline void parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const size_t eq = a.find('=');
    if (eq == std::string::npos) emu::fail(("key=value expected: " + a).c_str());
    args()[a.substr(0, eq)] = a.substr(eq + 1);
  }
}

inline const std::string& arg(const std::string& k) {
  auto it = args().find(k);
  if (it == args().end()) emu::fail(("missing argument " + k).c_str());
  return it->second;
}

}  // namespace harness
