// The parameter store: ids, the safetensors codec, checksums, crash-safe files, start-up load.
#include "lstmserve/core/store.h"

#include <sys/stat.h>
#include <utime.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace lstmserve::core {
namespace {

namespace fs = std::filesystem;

StoredSet MakeStored(const std::string& id, uint64_t seed = 7, int64_t layers = 2) {
  ParameterSetSpec spec;
  spec.lstm = LstmTemplate{};
  spec.lstm->num_layers = layers;
  spec.lstm->input_size = 5;
  spec.lstm->hidden_size = 3;
  spec.seed = seed;
  StoredSet stored;
  stored.id = id;
  stored.set = *CreateParameterSet(spec, {});
  stored.checksum = ComputeChecksum(stored.set);
  stored.spec = "spec-bytes";
  stored.create_time_micros = 1234567;
  return stored;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/lstmserve-store-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(SetIdTest, AcceptsSafeIdsAndRejectsEverythingElse) {
  for (const std::string& ok :
       std::vector<std::string>{"a", "0", "enas-controller.v2", "x_y-z.1", std::string(63, 'a')}) {
    EXPECT_TRUE(ValidateSetId(ok).ok()) << ok;
  }
  for (const char* bad : {"", "../x", "a/b", "A", "-a", ".hidden", "a b", "x.tmp", "x.corrupt", "é"}) {
    EXPECT_EQ(ValidateSetId(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ValidateSetId(std::string(64, 'a')).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChecksumTest, SameSpecAndSeedGiveTheSameChecksumAndAnyChangeAnother) {
  EXPECT_EQ(MakeStored("a").checksum, MakeStored("b").checksum);
  EXPECT_NE(MakeStored("a", 7).checksum, MakeStored("a", 8).checksum);
  StoredSet renamed = MakeStored("a");
  renamed.set.tensors[0].name = "v_0";
  EXPECT_NE(ComputeChecksum(renamed.set), MakeStored("a").checksum);
  EXPECT_EQ(MakeStored("a").checksum.rfind("sha256:", 0), 0u);
  EXPECT_EQ(MakeStored("a").checksum.size(), 7u + 64u);
}

TEST(SafetensorsTest, RoundTripKeepsBitsOrderAndMetadata) {
  const StoredSet stored = MakeStored("round-trip");
  auto bytes = EncodeSafetensors(stored);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto back = DecodeSafetensors(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->id, "round-trip");
  EXPECT_EQ(back->origin, "created");
  EXPECT_EQ(back->spec, "spec-bytes");
  EXPECT_EQ(back->create_time_micros, 1234567);
  EXPECT_EQ(back->checksum, stored.checksum);
  EXPECT_EQ(back->set.byte_size, stored.set.byte_size);
  ASSERT_EQ(back->set.tensors.size(), 2u);
  EXPECT_EQ(back->set.tensors[0].name, "w_0");
  EXPECT_TRUE(at::equal(back->set.tensors[1].value, stored.set.tensors[1].value));
}

TEST(SafetensorsTest, MalformedFilesAreDataLossNeverACrash) {
  const std::string good = *EncodeSafetensors(MakeStored("x"));
  std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"short", good.substr(0, 5)},
      {"truncated data", good.substr(0, good.size() - 3)},
      {"header length past the end", std::string("\xff\xff\xff\x00\x00\x00\x00\x00", 8) + "{}"},
      {"not JSON", std::string("\x04\x00\x00\x00\x00\x00\x00\x00", 8) + "nope"},
      {"no tensors", std::string("\x02\x00\x00\x00\x00\x00\x00\x00", 8) + "{}"},
  };
  std::string flipped = good;
  flipped[flipped.size() - 1] ^= 0x40;
  cases.push_back({"flipped data byte", flipped});
  std::string trailing = good + "xx";
  cases.push_back({"trailing bytes", trailing});
  auto with_header = [](const std::string& json, const std::string& data) {
    const uint64_t n = json.size();
    return std::string(reinterpret_cast<const char*>(&n), 8) + json + data;
  };
  cases.push_back(
      {"overlapping offsets",
       with_header(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
           std::string(8, '\0'))});
  cases.push_back({"unknown dtype",
                   with_header(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0'))});
  cases.push_back({"shape and size disagree",
                   with_header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,4]}})", std::string(4, '\0'))});
  cases.push_back({"negative size",
                   with_header(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0'))});
  cases.push_back({"bad tensor name",
                   with_header(R"({"../a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'))});
  cases.push_back({"shape not a list",
                   with_header(R"({"a":{"dtype":"F32","shape":"x","data_offsets":[0,4]}})", std::string(4, '\0'))});
  // Found by fuzz_safetensors under UBSan: numbers that are not int64s.
  cases.push_back(
      {"offset of 1e81",
       with_header(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,1222222222222222222222222222222222222222222222222222222222222222222222222222222260]}})",
           std::string(4, '\0'))});
  cases.push_back(
      {"offset past int64", with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}})",
                                        std::string(4, '\0'))});
  cases.push_back({"fractional size",
                   with_header(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", std::string(4, '\0'))});
  cases.push_back({"negative offset",
                   with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", std::string(4, '\0'))});
  for (const auto& [what, bytes] : cases) {
    auto decoded = DecodeSafetensors(bytes);
    EXPECT_FALSE(decoded.ok()) << what;
    EXPECT_TRUE(decoded.status().code() == absl::StatusCode::kDataLoss ||
                decoded.status().code() == absl::StatusCode::kInvalidArgument)
        << what << ": " << decoded.status();
  }
}

TEST(ParameterStoreTest, SaveLoadRemoveAndDuplicates) {
  TempDir dir;
  auto store = ParameterStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  const StoredSet stored = MakeStored("set-1");
  ASSERT_TRUE((*store)->Save(stored).ok());
  EXPECT_TRUE((*store)->Contains("set-1"));
  EXPECT_EQ((*store)->Save(stored).code(), absl::StatusCode::kAlreadyExists);
  auto loaded = (*store)->Load("set-1");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->checksum, stored.checksum);
  EXPECT_EQ((*store)->Load("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->Load("../etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*store)->Remove("set-1").ok());
  EXPECT_EQ((*store)->Remove("set-1").code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE((*store)->Contains("set-1"));
  // Nothing but the sets' files is ever left in the folder.
  for (const auto& e : fs::directory_iterator(dir.path())) ADD_FAILURE() << "left behind: " << e.path();
}

TEST(ParameterStoreTest, LoadAllSkipsAndMovesAsideCorruptFiles) {
  TempDir dir;
  auto store = *ParameterStore::Open(dir.path());
  ASSERT_TRUE(store->Save(MakeStored("good-a")).ok());
  ASSERT_TRUE(store->Save(MakeStored("bad-flip")).ok());
  ASSERT_TRUE(store->Save(MakeStored("bad-trunc")).ok());
  ASSERT_TRUE(store->Save(MakeStored("good-b")).ok());
  {  // flip one data byte
    std::fstream f(store->PathOf("bad-flip"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-2, std::ios::end);
    f.put('\x7f');
  }
  fs::resize_file(store->PathOf("bad-trunc"), fs::file_size(store->PathOf("bad-trunc")) - 10);
  std::ofstream(dir.path() + "/BAD NAME.safetensors") << "x";
  auto report = store->LoadAll();
  ASSERT_EQ(report.sets.size(), 2u);
  EXPECT_EQ(report.sets[0].id, "good-a");
  EXPECT_EQ(report.sets[1].id, "good-b");
  EXPECT_EQ(report.problems.size(), 3u);
  EXPECT_TRUE(fs::exists(store->PathOf("bad-flip") + ".corrupt"));
  EXPECT_FALSE(fs::exists(store->PathOf("bad-flip")));
  EXPECT_EQ(store->LoadAll().problems.size(), 0u) << "moved-aside files are not read again";
}

// A model directory (--model_dir): files without lstmserve's metadata, read only.
TEST(ModelDirTest, ReadsForeignFilesChecksSpecsAndNeverWrites) {
  TempDir dir;
  StoredSet plain = MakeStored("ignored");  // an LSTM of 2 layers, I = 5, H = 3
  plain.id.clear();
  plain.checksum.clear();
  plain.spec.clear();
  {
    const std::string bytes = *EncodeSafetensors(plain);  // lstmserve.id empty: as another writer
    std::ofstream(dir.path() + "/lstm.safetensors", std::ios::binary) << bytes;
    std::ofstream(dir.path() + "/bad.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 3);
  }
  std::ofstream(dir.path() + "/lstm.json") << R"({"num_layers": 2, "input_size": 5, "hidden_size": 3, "bias": false})";
  auto store = ParameterStore::OpenModelDir(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->read_only());
  auto loaded = (*store)->Load("lstm");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->id, "lstm");
  EXPECT_EQ(loaded->origin, "model_dir");
  EXPECT_EQ(loaded->checksum, ComputeChecksum(plain.set));
  ASSERT_TRUE(loaded->set.lstm.has_value());
  EXPECT_EQ(loaded->set.lstm->hidden_size, 3);
  EXPECT_EQ((*store)->Save(MakeStored("new")).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store)->Remove("lstm").code(), absl::StatusCode::kFailedPrecondition);
  auto report = (*store)->LoadAll();
  ASSERT_EQ(report.sets.size(), 1u);
  ASSERT_EQ(report.problems.size(), 1u);
  EXPECT_NE(report.problems[0].find("bad.safetensors"), std::string::npos) << report.problems[0];
  EXPECT_TRUE(fs::exists(dir.path() + "/bad.safetensors")) << "a model directory's file is never moved aside";
  EXPECT_FALSE(fs::exists(dir.path() + "/bad.safetensors.corrupt"));

  // A spec that does not fit the tensors, and one that does not parse.
  std::ofstream(dir.path() + "/lstm.json") << R"({"num_layers": 3, "input_size": 5, "hidden_size": 3})";
  auto three = (*store)->Load("lstm");
  EXPECT_EQ(three.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(three.status().message().find("w_2 must be [6, 12]"), std::string::npos) << three.status();
  std::ofstream(dir.path() + "/lstm.json") << "[]";
  EXPECT_EQ((*store)->Load("lstm").status().code(), absl::StatusCode::kDataLoss);

  // SHA256SUMS: a listed file that matches loads; one that is not listed, or does not match,
  // is DATA_LOSS; a malformed SHA256SUMS stops the opening.
  fs::remove(dir.path() + "/lstm.json");
  std::ofstream(dir.path() + "/SHA256SUMS") << std::string(64, '0') << "  lstm.safetensors\n";
  auto checked = ParameterStore::OpenModelDir(dir.path());
  ASSERT_TRUE(checked.ok()) << checked.status();
  auto mismatch = (*checked)->Load("lstm");
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(mismatch.status().message().find("does not match SHA256SUMS"), std::string::npos) << mismatch.status();
  EXPECT_NE((*checked)->Load("bad").status().message().find("not listed"), std::string::npos);
  std::ofstream(dir.path() + "/SHA256SUMS") << "xyz lstm.safetensors\n";
  EXPECT_EQ(ParameterStore::OpenModelDir(dir.path()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ParameterStore::OpenModelDir(dir.path() + "/none").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ParameterStoreTest, OpenRemovesStaleTemporaryFilesOnly) {
  TempDir dir;
  const std::string stale = dir.path() + "/.x.1.0.tmp";
  const std::string fresh = dir.path() + "/.y.1.0.tmp";
  std::ofstream(stale) << "partial";
  std::ofstream(fresh) << "partial";
  struct utimbuf old_time {
    1000, 1000
  };
  ASSERT_EQ(utime(stale.c_str(), &old_time), 0);
  ASSERT_TRUE(ParameterStore::Open(dir.path()).ok());
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh)) << "a fresh temp file may belong to another live server";
}

TEST(ParameterStoreTest, FilesAreReadableByAnIndependentPythonReader) {
  TempDir dir;
  auto store = *ParameterStore::Open(dir.path());
  ASSERT_TRUE(store->Save(MakeStored("interop", 42, 3)).ok());
  const std::string cmd = absl::StrCat(LSTMSERVE_PYTHON, " ", LSTMSERVE_READ_SAFETENSORS, " ", store->PathOf("interop"),
                                       " --reference-dir '", LSTMSERVE_REFERENCE_DIR, "' --seed 42 --lstm 3,5,3");
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace
}  // namespace lstmserve::core
