// The sets a server holds: in memory on the serving device, persisted in the store.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

#include "lstmserve/core/stacked_lstm.h"
#include "lstmserve/core/store.h"
#include "lstmserve/server/metrics.h"

namespace lstmserve::server {

// One set as served. Immutable once made; shared by the calls that use it, so a delete
// never pulls tensors from under a call in flight.
struct SetEntry {
  core::StoredSet stored;                 // tensors on the serving device (reduced weight storage: the CPU)
  std::optional<core::StackedLstm> lstm;  // present when the tensors form a stacked LSTM
};

// Thread-safe.
//
// Memory: the sets held (in memory) take at most `max_total_bytes`. A set is read from the
// store on first use; when one more would not fit, the least recently used sets are
// dropped from memory (their files stay; they are read again on their next use) until it
// does. Calls in flight keep what they use until they finish. Only a set larger than the
// whole budget is refused (RESOURCE_EXHAUSTED).
//
// A set's bytes are its tensors' and, from the call that makes them on, the layouts its
// StackedLstm derives from them (StackedLstm::DerivedBytes: oneDNN's reordered weights, the
// packed GEMMs' weights, a small reduced set's float32 copy). A layout made past the budget
// drops the least recently used other sets; a set whose tensors and layouts alone exceed
// the budget is still served, and holds no other set beside it.
//
// The registry must outlive the calls that use its sets: their derived layouts report to it.
//
// The model-repository extension's unload drops a set from memory and marks it unloaded:
// inference refuses it (InferenceEngine::LstmSet) until Load; reading its metadata still
// works, from its file, without holding it.
class SetRegistry {
 public:
  // `metrics` (optional) counts store operations; it must outlive the registry.
  SetRegistry(std::unique_ptr<core::ParameterStore> store, c10::Device device, int64_t max_total_bytes,
              Metrics* metrics = nullptr);

  // Loads the sets in the store, in id order, while they fit the memory budget; the others
  // stay in the store and load on first use. Returns one line per file that could not be
  // read, and one for the sets left in the store.
  std::vector<std::string> LoadAll();

  // NOT_FOUND for an unknown id (after looking in the store, which another server sharing
  // the folder may have written); INVALID_ARGUMENT for a malformed id; RESOURCE_EXHAUSTED
  // when the set alone is larger than the memory budget; DATA_LOSS for a file that does
  // not decode. A set held in memory is checked against its file (one stat): deleted or
  // replaced by another server, it is dropped or read again. An unloaded set is read from
  // its file and returned without being held.
  absl::StatusOr<std::shared_ptr<const SetEntry>> Get(const std::string& id);

  // Persists and adds a set (tensors on any device; moved to the serving device, but for
  // sets with reduced weight storage, which stay on the CPU).
  // ALREADY_EXISTS if the id is taken, RESOURCE_EXHAUSTED when the set alone is larger than
  // the memory budget or on a full disk, and the store's other failures as it reports them
  // (FAILED_PRECONDITION for a read-only store, UNAVAILABLE for other I/O errors; paths only
  // in the detail).
  absl::StatusOr<std::shared_ptr<const SetEntry>> Add(core::StoredSet stored);

  // Removes a set from the store, then from memory. NOT_FOUND if unknown; when the file
  // cannot be removed (a read-only store), the store's error, and the set stays.
  absl::Status Delete(const std::string& id);

  // The model-repository extension. Load: clears the unloaded mark and holds the set in
  // memory (Get's errors). Unload: marks the set unloaded and drops it from memory; its
  // file stays (NOT_FOUND when the store has no such set).
  absl::Status Load(const std::string& id);
  absl::Status Unload(const std::string& id);
  bool Unloaded(const std::string& id) const;
  // Whether the store holds set `id` (one stat; nothing is read).
  bool Stored(const std::string& id) const;

  // Every set in the store, in id order, and whether it is held in memory or unloaded.
  struct IndexEntry {
    std::string id;
    bool held = false;
    bool unloaded = false;
  };
  std::vector<IndexEntry> Index() const;

  // Up to `limit` sets with ids after `after`, in id order, as the store folder holds them
  // (so sets made by other servers sharing it too; they are loaded); `more` says whether
  // any follow.
  std::vector<std::shared_ptr<const SetEntry>> List(const std::string& after, int limit, bool* more);

  // The bytes of the sets held, their derived layouts included; the layouts' share.
  int64_t total_bytes() const;
  int64_t derived_bytes() const;
  int64_t count() const;
  const c10::Device& device() const { return device_; }

 private:
  struct Held {
    std::shared_ptr<const SetEntry> entry;
    uint64_t last_use = 0;      // use_clock_ at its last Get
    int64_t derived_bytes = 0;  // its layouts' bytes reported while held
  };
  absl::StatusOr<std::shared_ptr<const SetEntry>> MakeEntry(core::StoredSet stored);
  // A layout of `entry` (set `id`) was made: counted while that entry is held.
  void AddDerivedBytes(const std::string& id, const SetEntry* entry, int64_t bytes);
  void Forget(const std::string& id, const std::shared_ptr<const SetEntry>& entry);
  absl::Status TooLarge(const std::string& id, int64_t size) const;
  // Drops the least recently used sets (but `keep`) until `size` more bytes fit.
  void MakeRoom(int64_t size, const std::string& keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Hold(const std::string& id, std::shared_ptr<const SetEntry> entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a held set from memory and from the byte count.
  void Drop(std::map<std::string, Held>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Count(StoreOperation operation, bool ok) const {
    if (metrics_ != nullptr) metrics_->ObserveStore(operation, ok);
  }

  const std::unique_ptr<core::ParameterStore> store_;
  const c10::Device device_;
  const int64_t max_total_bytes_;
  Metrics* const metrics_;
  absl::Mutex store_mu_;  // serialises writes to the store folder
  mutable absl::Mutex mu_;
  std::map<std::string, Held> sets_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> unloaded_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;  // derived_bytes_ included
  int64_t derived_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t use_clock_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lstmserve::server
