// The parameter store: one .safetensors file per set in one folder.
//
// File format: standard safetensors (8-byte little-endian header length, JSON header, data),
// readable by Python's safetensors and by torch. Tensors are written in the set's order, so
// their data offsets keep the draw order. The header's "__metadata__" holds:
//   lstmserve.id, lstmserve.origin ("created" | "imported"), lstmserve.create_time (Unix
//   microseconds), lstmserve.checksum ("sha256:<hex>"), lstmserve.spec (opaque to the store)
// and "format": "pt".
//
// Writes are crash-safe: a temporary file in the same folder (".<id>.<pid>.<n>.tmp"), fsync,
// link() to the final name (which fails if the name exists, so a set is never overwritten,
// not even by another server sharing the folder), unlink of the temporary, fsync of the
// folder. A file is either absent or complete.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#include "lstmserve/core/parameter_set.h"

namespace lstmserve::core {

// Checks a set id: [a-z0-9][a-z0-9._-]{0,62}, and not ending in ".tmp" or ".corrupt". Such
// an id can never name a path outside the store folder.
absl::Status ValidateSetId(absl::string_view id);

// "sha256:<hex>" over, for each tensor in order: name, 0, dtype name ("float32"...), 0, the
// shape as decimal sizes joined by ",", 0, then the row-major little-endian bytes. Equal
// sets give equal checksums on every machine.
std::string ComputeChecksum(const ParameterSet& set);

// Which file a set was read from: a set deleted and created again under the same id by
// another server sharing the folder is a new file (a new inode, time or size).
struct FileVersion {
  uint64_t inode = 0;
  int64_t mtime_ns = 0;
  int64_t size = 0;
  bool operator==(const FileVersion& o) const { return inode == o.inode && mtime_ns == o.mtime_ns && size == o.size; }
  bool operator!=(const FileVersion& o) const { return !(*this == o); }
};

// A set with what the store keeps beside its tensors.
struct StoredSet {
  std::string id;
  std::string origin = "created";
  int64_t create_time_micros = 0;
  std::string checksum;
  std::string spec;  // opaque to the store (the server keeps the request's spec here)
  ParameterSet set;
  FileVersion version;  // filled by Load and LoadAll (the file as it was before reading)
};

// Encodes a set (tensors copied to the CPU if needed) as safetensors bytes.
absl::StatusOr<std::string> EncodeSafetensors(const StoredSet& stored);

// Decodes and validates safetensors bytes: header size and JSON, known dtypes, shapes
// (rank 1..8, sizes >= 1), offsets that tile the data exactly, and, when the metadata has a
// checksum, that it matches. DATA_LOSS for anything malformed.
absl::StatusOr<StoredSet> DecodeSafetensors(absl::string_view bytes);

// The folder of sets. Thread-compatible: the caller serialises calls that change it.
class ParameterStore {
 public:
  // Opens (creating if needed) `dir`, and removes temporary files left by a crash.
  static absl::StatusOr<std::unique_ptr<ParameterStore>> Open(const std::string& dir);

  // Opens `dir` as a model directory, read only (KServe's /mnt/models, filled by its
  // storage initializer): nothing in it is ever written, renamed or removed; Save and Remove
  // answer FAILED_PRECONDITION. Its sets are the files `<id>.safetensors` as any safetensors
  // writer makes them (Python's safetensors.torch.save_file): without lstmserve's metadata
  // a file is the set its name says (origin "model_dir", its checksum computed). Beside
  // one, `<id>.json` may give the LSTM it holds, {"num_layers": L, "input_size": I,
  // "hidden_size": H, "bias": true|false}, checked against its tensors w_<l>, b_<l>. With a
  // file SHA256SUMS in `dir` (as `sha256sum` writes it), every set's file and spec must be
  // listed there and match. DATA_LOSS names what does not. FAILED_PRECONDITION when `dir`
  // is not a readable folder, or SHA256SUMS does not parse.
  static absl::StatusOr<std::unique_ptr<ParameterStore>> OpenModelDir(const std::string& dir);
  bool read_only() const { return read_only_; }

  // Writes a new set. ALREADY_EXISTS if the id has a file; RESOURCE_EXHAUSTED when the disk
  // is full (nothing is left behind); INTERNAL for other I/O errors.
  absl::Status Save(const StoredSet& stored);
  // Removes a set's file. NOT_FOUND if there is none.
  absl::Status Remove(absl::string_view id);
  // Reads one set; NOT_FOUND if absent, DATA_LOSS if corrupt.
  absl::StatusOr<StoredSet> Load(absl::string_view id) const;
  // True when the id has a file.
  bool Contains(absl::string_view id) const;
  // The id's file now (one stat); NOT_FOUND if there is none. Thread-safe.
  absl::StatusOr<FileVersion> Version(absl::string_view id) const;
  // The ids of every set file, sorted (what LoadAll would read). Thread-safe.
  std::vector<std::string> ListIds(std::string* problem = nullptr) const;

  struct LoadReport {
    std::vector<StoredSet> sets;        // every valid set, in id order
    std::vector<std::string> problems;  // one line per file skipped, with the reason
  };
  // Reads every set. A corrupt or unreadable file is renamed to "<file>.corrupt", reported
  // in `problems`, and never returned.
  LoadReport LoadAll();

  const std::string& dir() const { return dir_; }
  std::string PathOf(absl::string_view id) const;

 private:
  explicit ParameterStore(std::string dir) : dir_(std::move(dir)) {}
  // A model directory's file: its SHA256SUMS line checked, and a set without lstmserve's
  // metadata named by the file and checked against its spec.
  absl::Status CheckModelFile(absl::string_view name, absl::string_view bytes) const;
  absl::Status AdoptModelSet(absl::string_view id, StoredSet* stored) const;
  std::string dir_;
  bool read_only_ = false;
  std::map<std::string, std::string> sha256sums_;  // file name -> hex digest (model directory)
};

}  // namespace lstmserve::core
