#include "lstmserve/server/engine/set_registry.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"
#include "lstmserve/server/log.h"

namespace lstmserve::server {

SetRegistry::SetRegistry(std::unique_ptr<core::ParameterStore> store, c10::Device device, int64_t max_total_bytes,
                         Metrics* metrics)
    : store_(std::move(store)), device_(device), max_total_bytes_(max_total_bytes), metrics_(metrics) {}

absl::StatusOr<std::shared_ptr<const SetEntry>> SetRegistry::MakeEntry(core::StoredSet stored) {
  return core::GuardTorch("load parameter set", [&]() -> absl::StatusOr<std::shared_ptr<const SetEntry>> {
    // Sets with reduced weight storage stay on the CPU, whose kernels read them.
    for (auto& t : stored.set.tensors) {
      if (t.value.device() != device_ && stored.set.weight_storage == core::WeightStorage::kDType) {
        t.value = t.value.to(device_).contiguous();
      }
    }
    auto entry = std::make_shared<SetEntry>();
    auto lstm = core::StackedLstm::FromParameterSet(stored.set);
    if (lstm.ok()) {
      entry->lstm = *std::move(lstm);
      entry->lstm->SetDerivedBytesListener(
          [this, id = stored.id, raw = entry.get()](int64_t bytes) { AddDerivedBytes(id, raw, bytes); });
    }
    entry->stored = std::move(stored);
    return std::shared_ptr<const SetEntry>(std::move(entry));
  });
}

std::vector<std::string> SetRegistry::LoadAll() {
  absl::MutexLock store_lock(&store_mu_);
  core::ParameterStore::LoadReport report = store_->LoadAll();
  for (size_t i = 0; i < report.sets.size(); ++i) Count(StoreOperation::kLoad, true);
  for (size_t i = 0; i < report.problems.size(); ++i) Count(StoreOperation::kLoad, false);
  absl::MutexLock lock(&mu_);
  int64_t left = 0;
  for (auto& stored : report.sets) {
    const std::string id = stored.id;
    if (bytes_ + stored.set.byte_size > max_total_bytes_) {
      ++left;  // loads on first use
      continue;
    }
    auto entry = MakeEntry(std::move(stored));
    if (!entry.ok()) {
      report.problems.push_back(absl::StrCat(store_->PathOf(id), ": ", core::MessageForLog(entry.status())));
      continue;
    }
    Hold(id, *std::move(entry));
  }
  if (left > 0) {
    report.problems.push_back(absl::StrCat(left, " set(s) past --max_total_set_bytes=", max_total_bytes_,
                                           " stay in the store and load on first use"));
  }
  return report.problems;
}

void SetRegistry::Hold(const std::string& id, std::shared_ptr<const SetEntry> entry) {
  const int64_t size = entry->stored.set.byte_size;
  auto [it, inserted] = sets_.emplace(id, Held{std::move(entry), 0});
  if (inserted) bytes_ += size;
  it->second.last_use = ++use_clock_;
}

void SetRegistry::MakeRoom(int64_t size, const std::string& keep) {
  while (bytes_ + size > max_total_bytes_) {
    auto oldest = sets_.end();
    for (auto it = sets_.begin(); it != sets_.end(); ++it) {
      if (it->first != keep && (oldest == sets_.end() || it->second.last_use < oldest->second.last_use)) oldest = it;
    }
    if (oldest == sets_.end()) return;
    Drop(oldest);
    if (metrics_ != nullptr) metrics_->ObserveSetUnload(/*memory=*/true);
  }
}

void SetRegistry::AddDerivedBytes(const std::string& id, const SetEntry* entry, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto it = sets_.find(id);
  // Not held (dropped, or read for its metadata): the layout goes with the calls using it.
  if (it == sets_.end() || it->second.entry.get() != entry) return;
  it->second.derived_bytes += bytes;
  bytes_ += bytes;
  derived_bytes_ += bytes;
  MakeRoom(0, id);
}

absl::StatusOr<std::shared_ptr<const SetEntry>> SetRegistry::Get(const std::string& id) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(id));
  std::shared_ptr<const SetEntry> held;
  bool unloaded = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = sets_.find(id);
    if (it != sets_.end()) {
      held = it->second.entry;
      it->second.last_use = ++use_clock_;
    }
    unloaded = unloaded_.count(id) > 0;
  }
  if (held) {
    // Another server sharing the folder may have deleted the set, or deleted it and made
    // a new one under the same id: one stat tells.
    auto version = store_->Version(id);
    if (version.ok() && *version == held->stored.version) return held;
    Forget(id, held);
    if (absl::IsNotFound(version.status())) {
      return absl::NotFoundError(absl::StrCat("parameter set '", id, "' not found"));
    }
  }
  // Not in memory: another server sharing the store folder may have created it.
  absl::MutexLock store_lock(&store_mu_);
  {
    absl::MutexLock lock(&mu_);
    auto it = sets_.find(id);  // loaded by another call meanwhile
    if (it != sets_.end()) return it->second.entry;
  }
  auto stored = store_->Load(id);
  if (!absl::IsNotFound(stored.status())) Count(StoreOperation::kRead, stored.ok());
  if (!stored.ok()) {
    if (absl::IsNotFound(stored.status())) {
      return absl::NotFoundError(absl::StrCat("parameter set '", id, "' not found"));
    }
    return stored.status();
  }
  const int64_t size = stored->set.byte_size;
  if (size > max_total_bytes_) return TooLarge(id, size);
  LSTMSERVE_ASSIGN_OR_RETURN(auto entry, MakeEntry(*std::move(stored)));
  if (unloaded) return entry;  // read for its metadata, not held
  absl::MutexLock lock(&mu_);
  MakeRoom(size, id);
  Hold(id, entry);
  return sets_.at(id).entry;
}

void SetRegistry::Forget(const std::string& id, const std::shared_ptr<const SetEntry>& entry) {
  absl::MutexLock lock(&mu_);
  auto it = sets_.find(id);
  if (it == sets_.end() || it->second.entry != entry) return;
  Drop(it);
}

void SetRegistry::Drop(std::map<std::string, Held>::iterator it) {
  bytes_ -= it->second.entry->stored.set.byte_size + it->second.derived_bytes;
  derived_bytes_ -= it->second.derived_bytes;
  sets_.erase(it);
}

absl::Status SetRegistry::TooLarge(const std::string& id, int64_t size) const {
  return absl::ResourceExhaustedError(absl::StrCat(
      "parameter set '", id, "' takes ", size,
      " bytes, more than the server may hold (--max_total_set_bytes=", max_total_bytes_, "); raise the limit"));
}

absl::StatusOr<std::shared_ptr<const SetEntry>> SetRegistry::Add(core::StoredSet stored) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(stored.id));
  const std::string id = stored.id;
  const int64_t size = stored.set.byte_size;
  absl::MutexLock store_lock(&store_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (sets_.count(id) > 0 || store_->Contains(id)) {
      return absl::AlreadyExistsError(absl::StrCat("parameter set '", id, "' already exists"));
    }
  }
  if (size > max_total_bytes_) return TooLarge(id, size);
  const absl::Status saved = store_->Save(stored);
  Count(StoreOperation::kWrite, saved.ok());
  LSTMSERVE_RETURN_IF_ERROR(saved);
  // The file just written; a failed stat (another server deleted it already) leaves a
  // version that matches no file, so the next Get looks again.
  if (auto version = store_->Version(id); version.ok()) stored.version = *version;
  auto entry = MakeEntry(std::move(stored));
  if (!entry.ok()) {
    (void)store_->Remove(id);
    return entry.status();
  }
  absl::MutexLock lock(&mu_);
  unloaded_.erase(id);
  MakeRoom(size, id);
  Hold(id, *entry);
  return *entry;
}

absl::Status SetRegistry::Delete(const std::string& id) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(id));
  absl::MutexLock store_lock(&store_mu_);
  const absl::Status removed = store_->Remove(id);
  if (!absl::IsNotFound(removed)) Count(StoreOperation::kDelete, removed.ok());
  if (!removed.ok() && !absl::IsNotFound(removed)) return removed;  // the file stays, so does the set
  absl::MutexLock lock(&mu_);
  unloaded_.erase(id);
  auto it = sets_.find(id);
  if (it == sets_.end()) return removed;  // NOT_FOUND when neither had it
  Drop(it);
  return absl::OkStatus();
}

absl::Status SetRegistry::Load(const std::string& id) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(id));
  {
    absl::MutexLock lock(&mu_);
    unloaded_.erase(id);
  }
  return Get(id).status();
}

absl::Status SetRegistry::Unload(const std::string& id) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(id));
  absl::MutexLock store_lock(&store_mu_);
  if (!Stored(id)) return absl::NotFoundError(absl::StrCat("parameter set '", id, "' not found"));
  absl::MutexLock lock(&mu_);
  unloaded_.insert(id);
  if (auto it = sets_.find(id); it != sets_.end()) Drop(it);
  if (metrics_ != nullptr) metrics_->ObserveSetUnload(/*memory=*/false);
  return absl::OkStatus();
}

bool SetRegistry::Stored(const std::string& id) const { return store_->Contains(id); }

bool SetRegistry::Unloaded(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  return unloaded_.count(id) > 0;
}

std::vector<SetRegistry::IndexEntry> SetRegistry::Index() const {
  const std::vector<std::string> ids = store_->ListIds();
  std::vector<IndexEntry> out;
  out.reserve(ids.size());
  absl::MutexLock lock(&mu_);
  for (const std::string& id : ids) out.push_back({id, sets_.count(id) > 0, unloaded_.count(id) > 0});
  return out;
}

std::vector<std::shared_ptr<const SetEntry>> SetRegistry::List(const std::string& after, int limit, bool* more) {
  // The folder is the truth: it holds the sets of every server that shares it.
  const std::vector<std::string> ids = store_->ListIds();
  std::vector<std::shared_ptr<const SetEntry>> out;
  auto it = after.empty() ? ids.begin() : std::upper_bound(ids.begin(), ids.end(), after);
  for (; it != ids.end() && static_cast<int>(out.size()) < limit; ++it) {
    auto entry = Get(*it);
    if (entry.ok()) {
      out.push_back(*std::move(entry));
    } else if (!absl::IsNotFound(entry.status())) {  // deleted meanwhile: skip quietly
      LogError(absl::StrCat("list: skipped set '", *it, "': ", core::MessageForLog(entry.status())));
    }
  }
  *more = it != ids.end();
  return out;
}

int64_t SetRegistry::total_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

int64_t SetRegistry::derived_bytes() const {
  absl::MutexLock lock(&mu_);
  return derived_bytes_;
}

int64_t SetRegistry::count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sets_.size());
}

}  // namespace lstmserve::server
