#include "lstmserve/server/engine/sequence_store.h"

#include <cstring>
#include <random>

#include <ATen/ATen.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#include "lstmserve/core/status.h"
#include "lstmserve/core/tensor_bytes.h"
#include "lstmserve/server/engine/batcher.h"

namespace lstmserve::server {
namespace {

constexpr char kMagic[4] = {'L', 'S', 'Q', '1'};

void PutU64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  out->append(b, 8);
}
void PutText(std::string* out, const std::string& s) {
  PutU64(out, s.size());
  out->append(s);
}
void PutTensor(std::string* out, const at::Tensor& t) {
  if (!t.defined()) {
    PutU64(out, 0);
    return;
  }
  const at::Tensor c = t.cpu().contiguous();
  PutU64(out, static_cast<uint64_t>(c.dim()) + 1);
  PutU64(out, static_cast<uint64_t>(core::FromScalarType(c.scalar_type()).value_or(core::DType::kFloat32)));
  for (int64_t d : c.sizes()) PutU64(out, static_cast<uint64_t>(d));
  if (c.nbytes() > 0) out->append(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

// Reads what the Put* wrote; any shortfall or nonsense is DATA_LOSS.
class Reader {
 public:
  explicit Reader(const std::string& bytes) : p_(bytes.data()), end_(bytes.data() + bytes.size()) {}
  absl::StatusOr<uint64_t> U64() {
    if (end_ - p_ < 8) return Loss();
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p_[i])) << (8 * i);
    p_ += 8;
    return v;
  }
  absl::StatusOr<std::string> Text() {
    LSTMSERVE_ASSIGN_OR_RETURN(uint64_t n, U64());
    if (static_cast<uint64_t>(end_ - p_) < n) return Loss();
    std::string s(p_, n);
    p_ += n;
    return s;
  }
  absl::StatusOr<at::Tensor> Tensor() {
    LSTMSERVE_ASSIGN_OR_RETURN(uint64_t dims, U64());
    if (dims == 0) return at::Tensor();
    if (dims > 9) return Loss();
    LSTMSERVE_ASSIGN_OR_RETURN(uint64_t dtype, U64());
    if (dtype > static_cast<uint64_t>(core::DType::kInt8)) return Loss();
    std::vector<int64_t> shape;
    for (uint64_t i = 0; i + 1 < dims; ++i) {
      LSTMSERVE_ASSIGN_OR_RETURN(uint64_t d, U64());
      shape.push_back(static_cast<int64_t>(d));
    }
    LSTMSERVE_ASSIGN_OR_RETURN(int64_t count, core::CheckShape(shape, "a stored sequence's tensor", int64_t{1} << 40));
    const uint64_t bytes = static_cast<uint64_t>(count) * core::DTypeSize(static_cast<core::DType>(dtype));
    if (static_cast<uint64_t>(end_ - p_) < bytes) return Loss();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(core::ToScalarType(static_cast<core::DType>(dtype))));
    if (bytes > 0) std::memcpy(t.data_ptr(), p_, bytes);
    p_ += bytes;
    return t;
  }
  bool done() const { return p_ == end_; }
  absl::StatusOr<bool> Magic() {
    if (end_ - p_ < 4 || std::memcmp(p_, kMagic, 4) != 0) return Loss();
    p_ += 4;
    return true;
  }

 private:
  static absl::Status Loss() { return absl::DataLossError("a stored sequence's record is damaged; start it again"); }
  const char* p_;
  const char* end_;
};

std::string NewVersion() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
}

}  // namespace

std::string EncodeSequenceRecord(const SequenceRecord& r) {
  std::string out(kMagic, 4);
  PutText(&out, r.set_id);
  PutText(&out, r.set_checksum);
  PutU64(&out, r.steps);
  PutU64(&out, r.last_step);
  PutText(&out, r.last_request);
  PutU64(&out, r.state.c.size());
  for (const auto* part : {&r.state.c, &r.state.h}) {
    for (const auto& t : *part) PutTensor(&out, t);
  }
  PutTensor(&out, r.last_outputs);
  return out;
}

absl::StatusOr<SequenceRecord> DecodeSequenceRecord(const std::string& bytes) {
  return core::GuardTorch("a stored sequence", [&]() -> absl::StatusOr<SequenceRecord> {
    Reader in(bytes);
    SequenceRecord r;
    LSTMSERVE_RETURN_IF_ERROR(in.Magic().status());
    LSTMSERVE_ASSIGN_OR_RETURN(r.set_id, in.Text());
    LSTMSERVE_ASSIGN_OR_RETURN(r.set_checksum, in.Text());
    LSTMSERVE_ASSIGN_OR_RETURN(r.steps, in.U64());
    LSTMSERVE_ASSIGN_OR_RETURN(r.last_step, in.U64());
    LSTMSERVE_ASSIGN_OR_RETURN(r.last_request, in.Text());
    LSTMSERVE_ASSIGN_OR_RETURN(uint64_t layers, in.U64());
    if (layers > 4096) return absl::DataLossError("a stored sequence's record is damaged; start it again");
    for (auto* part : {&r.state.c, &r.state.h}) {
      for (uint64_t l = 0; l < layers; ++l) {
        LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor t, in.Tensor());
        part->push_back(std::move(t));
      }
    }
    LSTMSERVE_ASSIGN_OR_RETURN(r.last_outputs, in.Tensor());
    if (!in.done()) return absl::DataLossError("a stored sequence's record is damaged; start it again");
    return r;
  });
}

SequenceStore::SequenceStore(std::unique_ptr<SequenceBackend> backend, int64_t max_sequences,
                             absl::Duration idle_timeout)
    : backend_(std::move(backend)),
      max_sequences_(max_sequences),
      idle_timeout_(idle_timeout),
      reaper_([this] { Reap(); }) {
  committers_ = std::make_unique<ComputePool>(kSequenceCommitThreads);
}

void SequenceStore::RunCommit(std::function<void()> task) {
  // A step computed on its caller's thread (a lone small request) commits there too: no
  // batch waits behind it, and a thread hop is saved.
  if (!Batcher::OnBatchThread()) {
    task();
    return;
  }
  committers_->Submit(std::move(task));
}

SequenceStore::~SequenceStore() {
  committers_.reset();  // the commits queued run first
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  reaper_.join();
}

void SequenceStore::Open(const std::string& key, std::function<void()> on_idle, std::function<void()> on_drain) {
  absl::MutexLock lock(&mu_);
  streams_[key] = Stream{absl::Now(), std::move(on_idle), std::move(on_drain)};
}

void SequenceStore::DrainStreams() {
  absl::MutexLock lock(&mu_);
  for (auto& [key, stream] : streams_) {
    if (stream.on_drain) stream.on_drain();
  }
}

void SequenceStore::Touch(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = streams_.find(key);
  if (it != streams_.end() && it->second.last_seen != absl::InfiniteFuture()) it->second.last_seen = absl::Now();
}

void SequenceStore::Close(const std::string& key) {
  absl::MutexLock lock(&mu_);
  streams_.erase(key);
}

absl::Status SequenceStore::Claim(const std::string& key, const std::string& shown) {
  absl::MutexLock lock(&mu_);
  if (!claimed_.insert(key).second) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a request of sequence ", shown,
        " is in flight; send a sequence's requests one at a time, each after the previous one's response"));
  }
  return absl::OkStatus();
}

void SequenceStore::Unclaim(const std::string& key) {
  absl::MutexLock lock(&mu_);
  claimed_.erase(key);
}

absl::StatusOr<SequenceStore::Loaded> SequenceStore::Load(const std::string& key, bool trust_copy) {
  if (trust_copy && backend_->shared()) {
    absl::MutexLock lock(&mu_);
    if (auto it = copies_.find(key); it != copies_.end()) {
      ++backend_stats_.copies_used;
      return Loaded{it->second.version, it->second.record, "", /*from_copy=*/true};
    }
  }
  const absl::Time began = absl::Now();
  absl::StatusOr<BackendRecord> got = backend_->Get(key);
  {
    absl::MutexLock lock(&mu_);
    ++backend_stats_.loads;
    backend_stats_.load_seconds += absl::ToDoubleSeconds(absl::Now() - began);
    if (!got.ok()) ++backend_stats_.load_errors;
    copies_.erase(key);
  }
  if (!got.ok()) return got.status();
  Loaded out;
  out.version = std::move(got->version);
  out.trace = std::move(got->trace);
  if (!out.version.empty()) {
    LSTMSERVE_ASSIGN_OR_RETURN(out.record, DecodeSequenceRecord(got->bytes));
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> SequenceStore::Commit(const std::string& key, const std::string& expected,
                                                                 const SequenceRecord& record, bool end) {
  const absl::Time began = absl::Now();
  const std::string bytes = EncodeSequenceRecord(record);
  std::string version = end ? "" : NewVersion();
  absl::StatusOr<bool> written = end ? backend_->End(key, expected, absl::StrCat("E", bytes))
                                     : backend_->Put(key, expected, version, bytes, idle_timeout_,
                                                     absl::StrCat("L", record.steps), max_sequences_);
  absl::MutexLock lock(&mu_);
  ++backend_stats_.commits;
  backend_stats_.commit_seconds += absl::ToDoubleSeconds(absl::Now() - began);
  copies_.erase(key);
  if (!written.ok()) {
    if (absl::IsResourceExhausted(written.status())) {
      ++rejected_;
    } else {
      ++backend_stats_.commit_errors;
    }
    return written.status();
  }
  if (!*written) {
    ++backend_stats_.conflicts;
    return std::optional<std::string>();
  }
  if (!end && backend_->shared()) {
    if (static_cast<int64_t>(copies_.size()) >= max_sequences_) copies_.erase(copies_.begin());
    copies_[key] = Copy{version, record};
  }
  return std::optional<std::string>(std::move(version));
}

SequenceStore::Trace SequenceStore::ReadTrace(const std::string& trace) {
  Trace out;
  if (trace.empty()) return out;
  if (trace[0] == 'E') {
    auto record = DecodeSequenceRecord(trace.substr(1));
    out.ended = true;
    if (record.ok()) {
      out.steps = record->steps;
      out.final_record = *std::move(record);
    }
    return out;
  }
  if (trace[0] == 'L') (void)absl::SimpleAtoi(absl::string_view(trace).substr(1), &out.steps);
  return out;
}

SequenceStore::Stats SequenceStore::stats() const {
  absl::StatusOr<int64_t> stored = backend_->Count();
  absl::MutexLock lock(&mu_);
  Stats stats;
  stats.active = stored.ok() ? *stored : -1;
  stats.steps = steps_.load(std::memory_order_relaxed);
  stats.rejected = rejected_;
  stats.idle_cancelled = idle_cancelled_;
  return stats;
}

SequenceStore::BackendStats SequenceStore::backend_stats() const {
  absl::MutexLock lock(&mu_);
  return backend_stats_;
}

void SequenceStore::Reap() {
  const absl::Duration period = std::min(absl::Seconds(1), idle_timeout_ / 4);
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), period);
    const absl::Time now = absl::Now();
    for (auto& [key, s] : streams_) {
      if (now - s.last_seen <= idle_timeout_) continue;
      ++idle_cancelled_;
      s.on_idle();
      s.last_seen = absl::InfiniteFuture();  // once; the stream Closes when it is done
    }
  }
}

}  // namespace lstmserve::server
