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

absl::StatusOr<std::shared_ptr<const SetEntry>> SetRegistry::MakeEntry(core::StoredSet stored) const {
  return core::GuardTorch("load parameter set", [&]() -> absl::StatusOr<std::shared_ptr<const SetEntry>> {
    // Sets with reduced weight storage stay on the CPU, whose kernels read them.
    for (auto& t : stored.set.tensors) {
      if (t.value.device() != device_ && stored.set.weight_storage == core::WeightStorage::kDType) {
        t.value = t.value.to(device_).contiguous();
      }
    }
    auto entry = std::make_shared<SetEntry>();
    auto lstm = core::StackedLstm::FromParameterSet(stored.set);
    if (lstm.ok()) entry->lstm = *std::move(lstm);
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
  for (auto& stored : report.sets) {
    const std::string id = stored.id;
    const int64_t size = stored.set.byte_size;
    if (bytes_ + size > max_total_bytes_) {
      report.problems.push_back(
          absl::StrCat(store_->PathOf(id), ": not loaded, ", size, " bytes would exceed --max_total_set_bytes"));
      continue;
    }
    auto entry = MakeEntry(std::move(stored));
    if (!entry.ok()) {
      report.problems.push_back(absl::StrCat(store_->PathOf(id), ": ", core::MessageForLog(entry.status())));
      continue;
    }
    sets_[id] = *std::move(entry);
    bytes_ += size;
  }
  return report.problems;
}

absl::StatusOr<std::shared_ptr<const SetEntry>> SetRegistry::Get(const std::string& id) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(id));
  std::shared_ptr<const SetEntry> held;
  {
    absl::MutexLock lock(&mu_);
    auto it = sets_.find(id);
    if (it != sets_.end()) held = it->second;
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
    if (it != sets_.end()) return it->second;
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
  {
    absl::MutexLock lock(&mu_);
    if (bytes_ + size > max_total_bytes_) return OverBudget(size);
  }
  LSTMSERVE_ASSIGN_OR_RETURN(auto entry, MakeEntry(*std::move(stored)));
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = sets_.emplace(id, entry);
  if (inserted) bytes_ += size;
  return it->second;
}

void SetRegistry::Forget(const std::string& id, const std::shared_ptr<const SetEntry>& entry) {
  absl::MutexLock lock(&mu_);
  auto it = sets_.find(id);
  if (it == sets_.end() || it->second != entry) return;
  bytes_ -= entry->stored.set.byte_size;
  sets_.erase(it);
}

absl::Status SetRegistry::OverBudget(int64_t size) const {
  return absl::ResourceExhaustedError(absl::StrCat("the server holds ", bytes_, " bytes of sets; ", size,
                                                   " more would exceed --max_total_set_bytes=", max_total_bytes_,
                                                   "; delete sets or raise the limit"));
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
    if (bytes_ + size > max_total_bytes_) return OverBudget(size);
  }
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
  sets_[id] = *entry;
  bytes_ += size;
  return *entry;
}

absl::Status SetRegistry::Delete(const std::string& id) {
  LSTMSERVE_RETURN_IF_ERROR(core::ValidateSetId(id));
  absl::MutexLock store_lock(&store_mu_);
  const absl::Status removed = store_->Remove(id);
  if (!absl::IsNotFound(removed)) Count(StoreOperation::kDelete, removed.ok());
  if (!removed.ok() && !absl::IsNotFound(removed)) return removed;  // the file stays, so does the set
  absl::MutexLock lock(&mu_);
  auto it = sets_.find(id);
  if (it == sets_.end()) return removed;  // NOT_FOUND when neither had it
  bytes_ -= it->second->stored.set.byte_size;
  sets_.erase(it);
  return absl::OkStatus();
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

int64_t SetRegistry::count() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(sets_.size());
}

}  // namespace lstmserve::server
