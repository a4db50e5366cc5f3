// SPDX-License-Identifier: MIT
// placement.cc - spread-based choice of the primary and replica nodes for a new message.
#include "placement.h"

#include <algorithm>

namespace porcupine {
namespace {

// splitmix64 finalizer of salt ^ (node * golden ratio): equal loads spread users.
std::uint64_t tie_hash(std::uint64_t salt, NodeId node) {
  std::uint64_t z = salt ^ (std::uint64_t{node} * 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Ranked {
  std::uint32_t load;
  std::uint64_t tie;
  NodeId id;
  bool candidate;
};

}  // namespace

Placement choose_placement(const PlacementInput& in) {
  std::vector<NodeId> in_map = in.mail_map;
  std::sort(in_map.begin(), in_map.end());
  in_map.erase(std::unique(in_map.begin(), in_map.end()), in_map.end());
  std::erase(in_map, kNoNode);
  auto held = [&](NodeId id) { return std::binary_search(in_map.begin(), in_map.end(), id); };

  // Usable nodes (live, not full), one entry per id, least loaded first.
  std::vector<Ranked> ranked;
  for (const NodeLoad& n : in.live)
    if (!n.full && n.id != kNoNode) ranked.push_back({n.load, tie_hash(in.salt, n.id), n.id, held(n.id)});
  std::sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
    return a.id != b.id ? a.id < b.id : a.load < b.load;  // a duplicated id keeps its lowest load
  });
  ranked.erase(std::unique(ranked.begin(), ranked.end(),
                           [](const Ranked& a, const Ranked& b) { return a.id == b.id; }),
               ranked.end());
  std::sort(ranked.begin(), ranked.end(), [](const Ranked& a, const Ranked& b) {
    if (a.load != b.load) return a.load < b.load;
    if (a.tie != b.tie) return a.tie < b.tie;
    return a.id < b.id;
  });

  // Top the candidates up to `spread` with the least-loaded others, then
  // order: candidates by load, then the others by load.
  std::size_t candidates = static_cast<std::size_t>(
      std::count_if(ranked.begin(), ranked.end(), [](const Ranked& r) { return r.candidate; }));
  for (Ranked& r : ranked) {
    if (candidates >= in.spread) break;
    if (!r.candidate) {
      r.candidate = true;
      ++candidates;
    }
  }
  // A busy user's nodes: when a node the message would go to has at least
  // kBusyFactor times the load of the least-loaded other node, plus
  // kBusyMargin, that other node takes its place and joins the user's
  // nodes. A user whose own arrivals queue on its few disks (a hot user)
  // so spreads over more nodes, one at a time and only while its nodes
  // are busier than the rest; a user with little mail stays on `spread`.
  bool grown = false;
  if (in.grow_when_busy) {
    std::vector<Ranked*> cands, others;
    for (Ranked& r : ranked) (r.candidate ? cands : others).push_back(&r);
    std::size_t o = 0;
    for (std::size_t i = std::min<std::size_t>(in.replicas, cands.size()); i-- > 0 && o < others.size();) {
      if (cands[i]->load < kBusyFactor * others[o]->load + kBusyMargin) break;
      others[o++]->candidate = true;
      grown = true;
    }
  }
  std::stable_partition(ranked.begin(), ranked.end(), [](const Ranked& r) { return r.candidate; });

  // Spread is exceeded when an outsider is taken although the map already
  // held `spread` nodes and some of them were down or full (an outsider that
  // only R > spread brings in does not count).
  const std::size_t usable_in_map = static_cast<std::size_t>(
      std::count_if(ranked.begin(), ranked.end(), [&](const Ranked& r) { return held(r.id); }));
  const bool map_degraded = in_map.size() >= in.spread && usable_in_map < in_map.size();

  Placement out;
  out.spread_grown = grown;
  const std::size_t count = std::min<std::size_t>(in.replicas, ranked.size());
  for (std::size_t i = 0; i < count; ++i) {
    out.nodes.push_back(ranked[i].id);
    if (map_degraded && !held(ranked[i].id)) out.spread_exceeded = true;
  }
  return out;
}

}  // namespace porcupine
