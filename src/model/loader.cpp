// Model::load: config + safetensors (HF or original/ layout) → shape-checked zero-copy weight views.
#include <filesystem>
#include <set>

#include "core/log.h"
#include "model/weight_table.h"
#include "model/weights.h"

namespace gptoss {

namespace fs = std::filesystem;

namespace {

struct OpenedCheckpoint {
  std::shared_ptr<TensorStore> store;
  CheckpointLayout layout = CheckpointLayout::kHF;
};

bool has_original_names(const TensorStore& s) {
  return s.find("embedding.weight") || s.find("block.0.attn.qkv.weight");
}
bool has_hf_names(const TensorStore& s) {
  return s.find("model.embed_tokens.weight") || s.find("model.layers.0.self_attn.q_proj.weight");
}

// Finds the tensors of DIR: its own safetensors (HF names, or original names placed at the top),
// else DIR/original/*.safetensors in the OpenAI layout. Malformed files are errors, not fallbacks.
Result<OpenedCheckpoint> open_checkpoint(const std::string& dir) {
  auto root = TensorStore::open_dir(dir);
  if (root.ok() && has_hf_names(**root)) return OpenedCheckpoint{std::move(root).value(), CheckpointLayout::kHF};
  if (root.ok() && has_original_names(**root))
    return OpenedCheckpoint{std::move(root).value(), CheckpointLayout::kOriginal};
  if (!root.ok() && root.status().code() != ErrorCode::kNotFound) return root.status();
  const fs::path orig = fs::path(dir) / "original";
  std::error_code ec;
  if (fs::is_directory(orig, ec)) {
    auto o = TensorStore::open_dir(orig.string());
    if (!o.ok() && o.status().code() != ErrorCode::kNotFound) return o.status();
    if (o.ok() && has_original_names(**o)) return OpenedCheckpoint{std::move(o).value(), CheckpointLayout::kOriginal};
  }
  if (!root.ok()) return root.status();
  // Neither naming scheme recognised: report missing tensors against the HF table.
  return OpenedCheckpoint{std::move(root).value(), CheckpointLayout::kHF};
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Presence, dtype and exact shape of every table entry, before any data is touched.
Status check_tensors(const std::string& dir, const TensorStore& store, const std::vector<WeightSlot>& slots) {
  for (const WeightSlot& slot : slots) {
    const TensorView* tv = store.find(slot.name);
    if (!tv)
      return make_error(ErrorCode::kNotFound, "{}: missing tensor '{}' (expected {} {})", dir, slot.name,
                        dtype_name(slot.dtype), shape_str(slot.shape));
    if (tv->dtype != slot.dtype)
      return make_error(ErrorCode::kFormat, "{}: dtype {} expected {} (file {})", slot.name, dtype_name(tv->dtype),
                        dtype_name(slot.dtype), tv->file);
    if (tv->shape != slot.shape)
      return make_error(ErrorCode::kFormat, "{}: shape {} expected {} (file {})", slot.name, tv->shape_str(),
                        shape_str(slot.shape), tv->file);
  }
  return {};
}

void warn_unexpected(const std::string& dir, const TensorStore& store, const std::vector<WeightSlot>& slots) {
  std::set<std::string> expected;
  for (const WeightSlot& slot : slots) expected.insert(slot.name);
  std::vector<std::string> extra;
  for (const std::string& name : store.names())
    if (!expected.count(name)) extra.push_back(name);
  if (!extra.empty()) log_warn("{}: ignoring {} unexpected tensor(s), first '{}'", dir, extra.size(), extra.front());
}

// Reads one byte per page so the mapping is resident before the first forward pass
// (the loader's progress then reflects real disk reads, not later page faults).
uint8_t touch_pages(const uint8_t* p, size_t n) {
  uint8_t acc = 0;
  for (size_t i = 0; i < n; i += 4096) acc ^= p[i];
  if (n) acc ^= p[n - 1];
  return acc;
}

}  // namespace

Result<std::shared_ptr<const Model>> Model::load(const std::string& dir, const LoadProgressFn& progress) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(ErrorCode::kNotFound, "{}: model directory does not exist", dir);
  GPTOSS_ASSIGN_OR_RETURN(Config config, config_load_dir(dir));
  GPTOSS_ASSIGN_OR_RETURN(OpenedCheckpoint ckpt, open_checkpoint(dir));
  std::shared_ptr<Model> model(new Model());
  model->config_ = std::move(config);
  model->source_ = dir;
  const std::vector<WeightSlot> slots = weight_table(model->config_, &model->weights_, ckpt.layout);
  GPTOSS_RETURN_IF_ERROR(check_tensors(dir, *ckpt.store, slots));
  warn_unexpected(dir, *ckpt.store, slots);

  LoadProgress prog;
  for (const WeightSlot& slot : slots) prog.bytes_total += slot.nbytes();
  volatile uint8_t sink = 0;  // keeps the page touches from being optimised away
  for (const WeightSlot& slot : slots) {
    const TensorView* tv = ckpt.store->find(slot.name);
    weight_slot_bind(slot, tv->data);
    sink = sink ^ touch_pages(tv->data, tv->nbytes);
    prog.bytes_done += tv->nbytes;
    prog.tensor = &slot.name;
    if (progress) progress(prog);
  }
  log_info("{}: loaded {} tensors, {:.2f} GiB ({} layout)", dir, slots.size(),
           static_cast<double>(prog.bytes_total) / (1u << 30),
           ckpt.layout == CheckpointLayout::kHF ? "HF" : "original");
  model->storage_ = std::move(ckpt.store);
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace gptoss
