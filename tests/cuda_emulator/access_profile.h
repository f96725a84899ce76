// Memory-access profile of an emulated launch: how the kernels' loads and stores would
// be served on a GPU. Built with g++ -fsanitize=thread -DNST_EMU_PROFILE: the
// ThreadSanitizer instrumentation calls __tsan_readN / __tsan_writeN before every load
// and store, and the definitions below stand in for the TSan runtime (not linked).
//
// Accesses to shared memory and to the registered global buffers group into warp
// instructions by (warp, the lane's barrier and warp-operation count, call site, space,
// n-th execution since then), which pairs up the lanes of one instruction wherever the
// warp runs converged. Where it does not (a site that some lanes of the warp skip, as at
// a matrix edge or in a diagonal tile's triangle) the pairing is by order, not by
// instruction, so those instructions are counted as divergent and not costed. Each
// converged instruction is costed as the hardware serves it:
//   shared: the warp's request splits into phases (one for up to 4 bytes a lane, two
//     half-warps for 8, four quarter-warps for 16); a phase takes as many wavefronts as
//     the most distinct 4-byte words that fall in one of the 32 banks;
//   global: the distinct 32-byte sectors the warp touches, against the fewest that hold
//     its bytes.
// Sites are call-site addresses, mapped to source lines with addr2line (the profile
// build links with -no-pie). Timing is not modelled.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace emu {
namespace profile {

enum Space : int { kShared = 0, kGlobal = 1 };

struct Region {
  const unsigned char* lo;
  size_t bytes;
  std::string name;
};

struct Group {
  int space, region, bytes;
  bool write;
  std::vector<std::pair<int, uintptr_t>> lanes;  // (lane, address)
};

struct Site {
  long instructions = 0, units = 0, ideal = 0;  // units: wavefronts (shared), sectors (global)
  long divergent = 0;                           // instructions not costed
};

using GroupKey = std::tuple<int, long, uintptr_t, int, long>;  // warp, epoch, site, space, occurrence
struct KeyHash {
  size_t operator()(const GroupKey& k) const {
    size_t h = std::hash<uintptr_t>()(std::get<2>(k));
    h = h * 1000003u ^ std::hash<long>()(std::get<1>(k));
    h = h * 1000003u ^ std::hash<long>()(std::get<4>(k));
    return h * 1000003u ^ (size_t)(std::get<0>(k) * 2 + std::get<3>(k));
  }
};
// (site, space, region, write, bytes per lane)
using SiteKey = std::tuple<uintptr_t, int, int, bool, int>;

// Inside the profiler: its own accesses are not the kernel's. A plain variable, read
// before anything instrumented runs.
inline bool busy = false;

struct State {
  int quiet = 0;      // inside an emulated instruction that records itself
  std::vector<Region> globals;
  std::unordered_map<GroupKey, Group, KeyHash> groups;                       // this block's
  std::unordered_map<uint64_t, std::pair<long, long>> occurrences;           // (thread, site, space) -> epoch, count
  std::map<SiteKey, Site> sites;
  std::vector<std::unordered_set<uintptr_t>> touched;  // per region: distinct sectors
  long mma_lanes = 0;
};

inline State& state() {
  static State s;
  return s;
}

// Suppresses recording inside an emulated instruction (ldmatrix reading its rows).
struct Quiet {
  Quiet() { ++state().quiet; }
  ~Quiet() { --state().quiet; }
};

inline void add_global(const void* p, size_t bytes, const char* name) {
  State& s = state();
  s.globals.push_back({static_cast<const unsigned char*>(p), bytes, name});
  s.touched.emplace_back();
}

// A warp instruction's cost in wavefronts (shared) or sectors (global), and its ideal.
inline std::pair<long, long> cost(const Group& g) {
  if (g.space == kGlobal) {
    std::unordered_set<uintptr_t> sectors, bytes;
    for (const auto& [lane, a] : g.lanes)
      for (int i = 0; i < g.bytes; ++i) {
        sectors.insert((a + i) / 32);
        bytes.insert(a + i);
      }
    return {(long)sectors.size(), (long)((bytes.size() + 31) / 32)};
  }
  const int per_phase = g.bytes <= 4 ? 32 : 128 / g.bytes;
  std::map<int, std::map<int, std::unordered_set<uintptr_t>>> phases;  // phase -> bank -> words
  for (const auto& [lane, a] : g.lanes)
    for (uintptr_t w = a / 4; w <= (a + g.bytes - 1) / 4; ++w) phases[lane / per_phase][w % 32].insert(w);
  long wavefronts = 0;
  for (const auto& [phase, banks] : phases) {
    size_t most = 0;
    for (const auto& [bank, words] : banks) most = std::max(most, words.size());
    wavefronts += (long)most;
  }
  return {wavefronts, (long)phases.size()};
}

inline void record(uintptr_t site, int thread, long epoch, const void* p, int bytes, bool write, int space,
                   int region) {
  State& s = state();
  auto& occ = s.occurrences[((uint64_t)thread << 48) ^ ((uint64_t)site << 1) ^ (uint64_t)space];
  if (occ.first != epoch) occ = {epoch, 0};
  Group& g = s.groups[{thread / kWarp, epoch, site, space, occ.second++}];
  if (g.lanes.empty()) g = Group{space, region, bytes, write, {}};
  g.lanes.push_back({thread % kWarp, reinterpret_cast<uintptr_t>(p)});
  if (space == kGlobal) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (uintptr_t sec = a / 32; sec <= (a + bytes - 1) / 32; ++sec) s.touched[region].insert(sec);
  }
}

// Costs this block's instructions into their sites: those of a (warp, epoch, site) whose
// every execution had all 32 lanes; the rest count as divergent.
inline void block_end() {
  State& s = state();
  busy = true;
  using Instance = std::tuple<int, long, uintptr_t, int>;  // warp, epoch, site, space
  auto instance = [](const GroupKey& k) {
    return Instance{std::get<0>(k), std::get<1>(k), std::get<2>(k), std::get<3>(k)};
  };
  std::map<Instance, bool> converged;
  for (const auto& [key, g] : s.groups) {
    const auto it = converged.try_emplace(instance(key), true).first;
    it->second = it->second && g.lanes.size() == (size_t)kWarp;
  }
  for (const auto& [key, g] : s.groups) {
    Site& site = s.sites[{std::get<2>(key), g.space, g.region, g.write, g.bytes}];
    if (!converged[instance(key)]) {
      ++site.divergent;
      continue;
    }
    const auto [units, ideal] = cost(g);
    ++site.instructions;
    site.units += units;
    site.ideal += ideal;
  }
  s.groups.clear();
  s.occurrences.clear();
  busy = false;
}

// One line per site and per global buffer:
//   site <address> shared|global <region> r|w <bytes per lane> <instructions> <units> <ideal> <divergent>
//   region <name> <sectors requested x 32> <distinct sectors x 32>
//   mma <warp-wide mma.sync instructions>
inline void write(const char* path) {
  State& s = state();
  busy = true;
  FILE* f = std::fopen(path, "w");
  if (!f) fail("cannot write the profile");
  std::vector<long> requested(s.globals.size(), 0);
  for (const auto& [key, site] : s.sites) {
    const auto& [pc, space, region, write, bytes] = key;
    std::fprintf(f, "site 0x%lx %s %s %c %d %ld %ld %ld %ld\n", (unsigned long)pc,
                 space == kShared ? "shared" : "global", space == kShared ? "smem" : s.globals[region].name.c_str(),
                 write ? 'w' : 'r', bytes, site.instructions, site.units, site.ideal, site.divergent);
    if (space == kGlobal) requested[region] += site.units * 32;
  }
  for (size_t r = 0; r < s.globals.size(); ++r)
    std::fprintf(f, "region %s %ld %ld\n", s.globals[r].name.c_str(), requested[r], (long)s.touched[r].size() * 32);
  std::fprintf(f, "mma %ld\n", s.mma_lanes / kWarp);
  std::fclose(f);
  busy = false;
}

}  // namespace profile
}  // namespace emu
