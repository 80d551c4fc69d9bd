// Python bindings of the native ops (module built by synctalk/ops/native.py).
//
// Each function checks its tensors (device, dtype, contiguity, shapes), allocates
// the outputs and calls the CPU loops (cpu/*.cpp) or, in a CUDA build, the CUDA
// launchers (cuda/*.cu) through the raw-pointer entry points of kernels.h. The
// Python wrappers in synctalk/ops/native.py validate user input first and make
// tensors contiguous; the checks here are the last line of defence.
// Only the ATen/pybind/autograd headers the bindings use (not <torch/extension.h>):
// this file is the slowest part of the build, and the full header costs ~4x the time.
#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <pybind11/stl.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "synctalk/density.h"
#include "synctalk/kernels.h"

#ifdef SYNCTALK_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace synctalk {
namespace cuda {
cudaStream_t current_stream();
}  // namespace cuda
}  // namespace synctalk
#endif

namespace st = synctalk;

#ifdef SYNCTALK_WITH_CUDA
// The stream the CUDA launchers (cuda/launch.cuh) run on: torch's current one.
cudaStream_t synctalk::cuda::current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

namespace {

void check_tensor(const at::Tensor& t, const char* name, const c10::Device& device) {
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), ", expected ", device);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_float(const at::Tensor& t, const char* name, at::ScalarType dtype,
                 const c10::Device& device) {
  check_tensor(t, name, device);
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
}

#ifdef SYNCTALK_WITH_CUDA
#define ST_DISPATCH_DEVICE(device, fn, ...)                                  \
  do {                                                                       \
    if ((device).is_cuda()) {                                                \
      const c10::cuda::CUDAGuard guard(device);                              \
      st::cuda::fn(__VA_ARGS__);                                             \
    } else {                                                                 \
      st::cpu::fn(__VA_ARGS__);                                              \
    }                                                                        \
  } while (0)
#else
#define ST_DISPATCH_DEVICE(device, fn, ...)                                  \
  do {                                                                       \
    TORCH_CHECK(!(device).is_cuda(),                                         \
                "the native ops were built without CUDA: rebuild on a "      \
                "machine with a CUDA torch (synctalk native build)");        \
    st::cpu::fn(__VA_ARGS__);                                                \
  } while (0)
#endif

// --------------------------------------------------------------- large CPU outputs

// The grid encodings' large CPU outputs (the encoded features, the table gradient: MBs
// each, made anew every training step) come from a small cache of buffers that earlier
// outputs left when they were freed. Freshly allocated memory of that size is mapped
// page by page, each page zeroed by the kernel on its first touch (measured: up to a few
// ms of system time per step on a busy machine); a cached buffer's pages are already
// mapped. At most kCachedBuffers buffers and $SYNCTALK_NATIVE_BUFFER_CACHE_MB (default
// 256) MB are kept; 0 turns the cache off. Buffers below kMinCachedBytes come from torch's
// allocator as usual, and so does everything on CUDA.
class BufferCache {
 public:
  static constexpr size_t kMinCachedBytes = size_t{1} << 20;
  static constexpr size_t kCachedBuffers = 8;
  static constexpr size_t kGranule = size_t{2} << 20;  // capacities are multiples of this

  // Leaked on purpose: tensors holding cached buffers may be freed after static
  // destructors have run.
  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();
    return *cache;
  }

  bool enabled() const { return limit_ > 0; }

  // A buffer of at least `bytes` (its capacity in *capacity): the smallest cached one
  // that fits without wasting more than half of it, else a new one.
  void* take(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i) {
        const size_t cap = free_[i].first;
        if (cap >= bytes && cap <= 2 * bytes + kGranule &&
            (best == free_.size() || cap < free_[best].first)) {
          best = i;
        }
      }
      if (best < free_.size()) {
        void* p = free_[best].second;
        *capacity = free_[best].first;
        cached_ -= *capacity;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        return p;
      }
    }
    *capacity = (bytes + kGranule - 1) / kGranule * kGranule;
    void* p = std::aligned_alloc(4096, *capacity);
    TORCH_CHECK(p != nullptr, "out of memory allocating ", *capacity, " bytes");
    return p;
  }

  // Back into the cache (the oldest buffers are freed beyond the limits).
  void give(void* p, size_t capacity) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.emplace_back(capacity, p);
      cached_ += capacity;
      while (!free_.empty() && (cached_ > limit_ || free_.size() > kCachedBuffers)) {
        drop.push_back(free_.front().second);
        cached_ -= free_.front().first;
        free_.erase(free_.begin());
      }
    }
    for (void* q : drop) std::free(q);
  }

  // Free every cached buffer; returns how many bytes that released.
  size_t clear() {
    std::vector<std::pair<size_t, void*>> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(free_);
      cached_ = 0;
    }
    size_t bytes = 0;
    for (const auto& b : all) {
      bytes += b.first;
      std::free(b.second);
    }
    return bytes;
  }

  std::pair<size_t, size_t> info() {
    std::lock_guard<std::mutex> lock(mu_);
    return {free_.size(), cached_};
  }

 private:
  BufferCache() {
    const char* env = std::getenv("SYNCTALK_NATIVE_BUFFER_CACHE_MB");
    const long mb = env != nullptr ? std::strtol(env, nullptr, 10) : 256;
    limit_ = mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
  }

  std::mutex mu_;
  std::vector<std::pair<size_t, void*>> free_;  // (capacity, buffer), oldest first
  size_t cached_ = 0;
  size_t limit_ = 0;
};

// at::empty for large CPU outputs through the BufferCache.
at::Tensor output_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t d : sizes) numel *= d;
  const size_t bytes =
      static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  BufferCache& cache = BufferCache::instance();
  if (options.device().is_cuda() || !cache.enabled() || bytes < BufferCache::kMinCachedBytes) {
    return at::empty(sizes, options);
  }
  size_t capacity = 0;
  void* p = cache.take(bytes, &capacity);
  return at::from_blob(
      p, sizes, [capacity](void* q) { BufferCache::instance().give(q, capacity); }, options);
}

// (cached buffers, cached bytes).
std::vector<int64_t> buffer_cache_info() {
  const auto i = BufferCache::instance().info();
  return {static_cast<int64_t>(i.first), static_cast<int64_t>(i.second)};
}

int64_t buffer_cache_clear() { return static_cast<int64_t>(BufferCache::instance().clear()); }

// ----------------------------------------------------------------------------- grid

st::GridLevels make_levels(const std::vector<int64_t>& resolutions,
                           const std::vector<bool>& hashed,
                           const std::vector<int64_t>& offsets, int64_t log2_hashmap_size,
                           int64_t n_rows, int64_t n_features) {
  const size_t L = resolutions.size();
  TORCH_CHECK(L >= 1 && L <= static_cast<size_t>(st::kMaxLevels), "between 1 and ",
              st::kMaxLevels, " levels are supported, got ", L);
  TORCH_CHECK(hashed.size() == L && offsets.size() >= L, "levels: inconsistent lengths");
  TORCH_CHECK(log2_hashmap_size >= 1 && log2_hashmap_size <= 31,
              "log2_hashmap_size must be in [1, 31]");
  st::GridLevels g{};
  g.n_levels = static_cast<int>(L);
  g.n_features = static_cast<int>(n_features);
  g.n_rows = n_rows;
  g.hashmap_mask = static_cast<uint32_t>((int64_t{1} << log2_hashmap_size) - 1);
  for (size_t l = 0; l < L; ++l) {
    TORCH_CHECK(resolutions[l] >= 1 && resolutions[l] < (int64_t{1} << 24),
                "level resolution out of range: ", resolutions[l]);
    g.res[l] = static_cast<uint32_t>(resolutions[l]);
    g.hashed[l] = hashed[l] ? 1 : 0;
    g.offset[l] = offsets[l];
  }
  return g;
}

st::PlaneAxes make_axes(const std::vector<std::vector<int64_t>>& axes, int64_t in_dim,
                        int dim) {
  TORCH_CHECK(!axes.empty() && axes.size() <= static_cast<size_t>(st::kMaxPlanes),
              "1 to ", st::kMaxPlanes, " planes are supported");
  st::PlaneAxes a{};
  a.n_planes = static_cast<int>(axes.size());
  a.in_dim = static_cast<int>(in_dim);
  for (size_t p = 0; p < axes.size(); ++p) {
    TORCH_CHECK(static_cast<int>(axes[p].size()) == dim, "plane ", p, " needs ", dim, " axes");
    for (int d = 0; d < dim; ++d) {
      TORCH_CHECK(axes[p][d] >= 0 && axes[p][d] < in_dim, "axis out of range");
      a.axes[p][d] = static_cast<int>(axes[p][d]);
    }
  }
  return a;
}

struct GridArgs {
  st::GridLevels g;
  st::PlaneAxes a;
  int dim;
};

GridArgs grid_args(const at::Tensor& x, const at::Tensor& table,
                   const std::vector<int64_t>& resolutions, const std::vector<bool>& hashed,
                   const std::vector<int64_t>& offsets, int64_t log2_hashmap_size,
                   const std::vector<std::vector<int64_t>>& axes) {
  TORCH_CHECK(x.dim() == 2, "x must be [N, D], got ", x.sizes());
  TORCH_CHECK(table.dim() == 3, "table must be [P, n_rows, F], got ", table.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "x must be float32 or float64, got ", x.scalar_type());
  const bool ok_table = table.scalar_type() == x.scalar_type() ||
                        (x.scalar_type() == at::kFloat && table.scalar_type() == at::kHalf);
  TORCH_CHECK(ok_table, "table dtype ", table.scalar_type(), " does not go with x dtype ",
              x.scalar_type(), " (float32 x: float32/float16 table; float64 x: float64 table)");
  check_tensor(x, "x", x.device());
  check_tensor(table, "table", x.device());
  GridArgs r;
  r.dim = axes.empty() ? 0 : static_cast<int>(axes[0].size());
  TORCH_CHECK(r.dim == 2 || r.dim == 3, "grids are 2-D or 3-D");
  TORCH_CHECK(static_cast<int64_t>(axes.size()) == table.size(0),
              "table has ", table.size(0), " planes, axes name ", axes.size());
  r.g = make_levels(resolutions, hashed, offsets, log2_hashmap_size, table.size(1),
                    table.size(2));
  TORCH_CHECK(offsets.size() == resolutions.size() + 1 &&
                  offsets.back() == table.size(1),
              "table has ", table.size(1), " rows, the levels need ", offsets.back());
  r.a = make_axes(axes, x.size(1), r.dim);
  return r;
}

at::Tensor grid_encode_forward(const at::Tensor& x, const at::Tensor& table,
                                  const std::vector<int64_t>& resolutions,
                                  const std::vector<bool>& hashed,
                                  const std::vector<int64_t>& offsets,
                                  int64_t log2_hashmap_size,
                                  const std::vector<std::vector<int64_t>>& axes) {
  const GridArgs ga = grid_args(x, table, resolutions, hashed, offsets, log2_hashmap_size, axes);
  const int64_t n = x.size(0);
  auto out = output_empty({n, ga.a.n_planes * ga.g.n_levels * ga.g.n_features}, x.options());
  if (n == 0) return out;
  if (ga.dim == 2) {  // planes and the tri-plane
    if (x.scalar_type() == at::kDouble) {
      ST_DISPATCH_DEVICE(x.device(), plane_encode_forward, ga.g, ga.a, n, x.data_ptr<double>(),
                         table.data_ptr<double>(), out.data_ptr<double>());
    } else if (table.scalar_type() == at::kHalf) {
      ST_DISPATCH_DEVICE(x.device(), plane_encode_forward, ga.g, ga.a, n, x.data_ptr<float>(),
                         reinterpret_cast<const st::HalfBits*>(table.data_ptr<at::Half>()),
                         out.data_ptr<float>());
    } else {
      ST_DISPATCH_DEVICE(x.device(), plane_encode_forward, ga.g, ga.a, n, x.data_ptr<float>(),
                         table.data_ptr<float>(), out.data_ptr<float>());
    }
    return out;
  }
  if (x.scalar_type() == at::kDouble) {
    ST_DISPATCH_DEVICE(x.device(), grid_encode_forward, ga.g, ga.a, ga.dim, n,
                       x.data_ptr<double>(), table.data_ptr<double>(), out.data_ptr<double>());
  } else if (table.scalar_type() == at::kHalf) {
    ST_DISPATCH_DEVICE(x.device(), grid_encode_forward, ga.g, ga.a, ga.dim, n,
                       x.data_ptr<float>(),
                       reinterpret_cast<const st::HalfBits*>(table.data_ptr<at::Half>()),
                       out.data_ptr<float>());
  } else {
    ST_DISPATCH_DEVICE(x.device(), grid_encode_forward, ga.g, ga.a, ga.dim, n,
                       x.data_ptr<float>(), table.data_ptr<float>(), out.data_ptr<float>());
  }
  return out;
}

// Returns (grad_table in x's dtype or undefined, grad_x or undefined).
std::vector<at::Tensor> grid_encode_backward(
    const at::Tensor& x, const at::Tensor& table, const at::Tensor& grad_out,
    const std::vector<int64_t>& resolutions, const std::vector<bool>& hashed,
    const std::vector<int64_t>& offsets, int64_t log2_hashmap_size,
    const std::vector<std::vector<int64_t>>& axes, bool need_table, bool need_x) {
  const GridArgs ga = grid_args(x, table, resolutions, hashed, offsets, log2_hashmap_size, axes);
  const int64_t n = x.size(0);
  check_float(grad_out, "grad_out", x.scalar_type(), x.device());
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == n &&
                  grad_out.size(1) == ga.a.n_planes * ga.g.n_levels * ga.g.n_features,
              "grad_out has shape ", grad_out.sizes());
  at::Tensor grad_table, grad_x;
  if (need_x) grad_x = at::zeros_like(x);
  if (ga.dim == 2 && n > 0) {
    // The plane kernels zero the table gradient themselves, level by level.
    if (need_table) grad_table = output_empty(table.sizes(), x.options());
    if (!need_table && !need_x) return {grad_table, grad_x};
    if (x.scalar_type() == at::kDouble) {
      ST_DISPATCH_DEVICE(x.device(), plane_encode_backward, ga.g, ga.a, n, x.data_ptr<double>(),
                         table.data_ptr<double>(), grad_out.data_ptr<double>(),
                         need_table ? grad_table.data_ptr<double>() : nullptr,
                         need_x ? grad_x.data_ptr<double>() : nullptr);
    } else if (table.scalar_type() == at::kHalf) {
      ST_DISPATCH_DEVICE(x.device(), plane_encode_backward, ga.g, ga.a, n, x.data_ptr<float>(),
                         reinterpret_cast<const st::HalfBits*>(table.data_ptr<at::Half>()),
                         grad_out.data_ptr<float>(),
                         need_table ? grad_table.data_ptr<float>() : nullptr,
                         need_x ? grad_x.data_ptr<float>() : nullptr);
    } else {
      ST_DISPATCH_DEVICE(x.device(), plane_encode_backward, ga.g, ga.a, n, x.data_ptr<float>(),
                         table.data_ptr<float>(), grad_out.data_ptr<float>(),
                         need_table ? grad_table.data_ptr<float>() : nullptr,
                         need_x ? grad_x.data_ptr<float>() : nullptr);
    }
    return {grad_table, grad_x};
  }
  if (need_table) grad_table = output_empty(table.sizes(), x.options()).zero_();
  if (n == 0) return {grad_table, grad_x};
  if (x.scalar_type() == at::kDouble) {
    if (need_table)
      ST_DISPATCH_DEVICE(x.device(), grid_encode_backward_table, ga.g, ga.a, ga.dim, n,
                         x.data_ptr<double>(), grad_out.data_ptr<double>(),
                         grad_table.data_ptr<double>());
    if (need_x)
      ST_DISPATCH_DEVICE(x.device(), grid_encode_backward_x, ga.g, ga.a, ga.dim, n,
                         x.data_ptr<double>(), table.data_ptr<double>(),
                         grad_out.data_ptr<double>(), grad_x.data_ptr<double>());
  } else {
    if (need_table)
      ST_DISPATCH_DEVICE(x.device(), grid_encode_backward_table, ga.g, ga.a, ga.dim, n,
                         x.data_ptr<float>(), grad_out.data_ptr<float>(),
                         grad_table.data_ptr<float>());
    if (need_x) {
      if (table.scalar_type() == at::kHalf) {
        ST_DISPATCH_DEVICE(x.device(), grid_encode_backward_x, ga.g, ga.a, ga.dim, n,
                           x.data_ptr<float>(),
                           reinterpret_cast<const st::HalfBits*>(table.data_ptr<at::Half>()),
                           grad_out.data_ptr<float>(), grad_x.data_ptr<float>());
      } else {
        ST_DISPATCH_DEVICE(x.device(), grid_encode_backward_x, ga.g, ga.a, ga.dim, n,
                           x.data_ptr<float>(), table.data_ptr<float>(),
                           grad_out.data_ptr<float>(), grad_x.data_ptr<float>());
      }
    }
  }
  return {grad_table, grad_x};
}

// ------------------------------------------------------------------------ raymarch

void check_rays(const at::Tensor& rays_o, const at::Tensor& rays_d, const at::Tensor& aabb) {
  const auto dt = rays_o.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "rays must be float32 or float64");
  check_float(rays_o, "rays_o", dt, rays_o.device());
  check_float(rays_d, "rays_d", dt, rays_o.device());
  check_float(aabb, "aabb", dt, rays_o.device());
  TORCH_CHECK(rays_o.dim() == 2 && rays_o.size(1) == 3 && rays_d.sizes() == rays_o.sizes(),
              "rays_o/rays_d must be [N, 3]");
  TORCH_CHECK(aabb.numel() == 6, "aabb must have 6 values");
}

// Returns (t_near [N], t_far [N]).
std::vector<at::Tensor> ray_aabb(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                 const at::Tensor& aabb, double near) {
  check_rays(rays_o, rays_d, aabb);
  const int64_t n = rays_o.size(0);
  auto t_near = at::empty({n}, rays_o.options());
  auto t_far = at::empty({n}, rays_o.options());
  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES(rays_o.scalar_type(), "ray_aabb", [&] {
      ST_DISPATCH_DEVICE(rays_o.device(), ray_aabb<scalar_t>, n, rays_o.data_ptr<scalar_t>(),
                         rays_d.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(),
                         static_cast<scalar_t>(near), t_near.data_ptr<scalar_t>(),
                         t_far.data_ptr<scalar_t>());
    });
  }
  return {t_near, t_far};
}

// The marching ops' occupancy argument: `occupied` ([R, R, R] bool), or (CPU only)
// `occupied_bits` (pack_bitfield's bitfield of an R = bits_res grid), or neither (no grid).
// Checks it, sets mp->grid_res (0: no grid) and mp->occupancy_bits, and returns the bytes
// the kernels read (nullptr without a grid).
static const uint8_t* occupancy_arg(const c10::optional<at::Tensor>& occupied,
                                    const c10::optional<at::Tensor>& occupied_bits,
                                    int64_t bits_res, const c10::Device& dev,
                                    st::MarchParams* mp) {
  mp->grid_res = 0;
  mp->occupancy_bits = occupied_bits.has_value();
  if (occupied.has_value()) {
    TORCH_CHECK(!mp->occupancy_bits, "pass occupied or occupied_bits, not both");
    check_float(*occupied, "occupied", at::kBool, dev);
    TORCH_CHECK(occupied->dim() == 3 && occupied->size(0) == occupied->size(1) &&
                    occupied->size(1) == occupied->size(2) && occupied->size(0) >= 1,
                "occupied must be [R, R, R]");
    mp->grid_res = static_cast<int>(occupied->size(0));
    return reinterpret_cast<const uint8_t*>(occupied->data_ptr<bool>());
  }
  if (mp->occupancy_bits) {
    TORCH_CHECK(!dev.is_cuda(), "occupied_bits is for the CPU kernels");
    check_float(*occupied_bits, "occupied_bits", at::kByte, dev);
    TORCH_CHECK(bits_res >= 1 && occupied_bits->numel() * 8 >= bits_res * bits_res * bits_res,
                "occupied_bits must hold R^3 bits");
    mp->grid_res = static_cast<int>(bits_res);
    return occupied_bits->data_ptr<uint8_t>();
  }
  return nullptr;
}

// Returns (ray_indices [S], t_starts [S], t_ends [S], t_pos [S] (empty without
// noise), offsets [N], counts [N]). occupied: [R, R, R] bool or None; noise:
// [N, n_samples] uniform in [0, 1) or None (midpoints).
// occupied_bits / bits_res (CPU only): the grid as pack_bitfield's bitfield of an
// [R, R, R] grid with R = bits_res, instead of `occupied` (fewer cache misses).
std::vector<at::Tensor> march_rays(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                   const at::Tensor& t_near, const at::Tensor& t_far,
                                   const c10::optional<at::Tensor>& occupied,
                                   const at::Tensor& aabb, int64_t n_samples,
                                   const c10::optional<at::Tensor>& noise,
                                   const c10::optional<at::Tensor>& occupied_bits,
                                   int64_t bits_res) {
  check_rays(rays_o, rays_d, aabb);
  const auto dev = rays_o.device();
  const auto dt = rays_o.scalar_type();
  const int64_t n = rays_o.size(0);
  check_float(t_near, "t_near", dt, dev);
  check_float(t_far, "t_far", dt, dev);
  TORCH_CHECK(t_near.numel() == n && t_far.numel() == n, "t_near/t_far must be [N]");
  TORCH_CHECK(n_samples >= 1 && n_samples <= (int64_t{1} << 30), "n_samples out of range");
  st::MarchParams mp{};
  mp.n_rays = n;
  mp.n_steps = static_cast<int>(n_samples);
  mp.perturb = noise.has_value();
  const uint8_t* occ = occupancy_arg(occupied, occupied_bits, bits_res, dev, &mp);
  if (noise.has_value()) {
    check_float(*noise, "noise", dt, dev);
    TORCH_CHECK(noise->dim() == 2 && noise->size(0) == n && noise->size(1) == n_samples,
                "noise must be [N, n_samples]");
  }
  if (!dev.is_cuda()) {
    // CPU: one pass leaves each ray's kept candidates compacted in cand [N, 3, K]; a
    // copy packs them (no keep mask, no second evaluation of the candidates).
    auto counts = at::empty({n}, rays_o.options().dtype(at::kLong));
    auto offsets = at::empty({n}, rays_o.options().dtype(at::kLong));
    at::Tensor ray_indices, t_starts, t_ends, t_pos;
    AT_DISPATCH_FLOATING_TYPES(dt, "march_rays", [&] {
      const scalar_t* nz = noise.has_value() ? noise->data_ptr<scalar_t>() : nullptr;
      auto cand = at::empty({n, 3, n_samples}, rays_o.options());
      if (n > 0) {
        st::cpu::march_count_packed<scalar_t>(
            mp, rays_o.data_ptr<scalar_t>(), rays_d.data_ptr<scalar_t>(),
            t_near.data_ptr<scalar_t>(), t_far.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(),
            occ, nz, cand.data_ptr<scalar_t>(), counts.data_ptr<int64_t>());
      }
      int64_t total = 0;
      const int64_t* c = counts.data_ptr<int64_t>();
      int64_t* o = offsets.data_ptr<int64_t>();
      for (int64_t r = 0; r < n; ++r) {  // exclusive prefix sum
        o[r] = total;
        total += c[r];
      }
      ray_indices = at::empty({total}, counts.options());
      t_starts = at::empty({total}, rays_o.options());
      t_ends = at::empty({total}, rays_o.options());
      t_pos = at::empty({noise.has_value() ? total : 0}, rays_o.options());
      if (total > 0) {
        st::cpu::march_copy_packed<scalar_t>(
            mp, cand.data_ptr<scalar_t>(), o, c, ray_indices.data_ptr<int64_t>(),
            t_starts.data_ptr<scalar_t>(), t_ends.data_ptr<scalar_t>(),
            noise.has_value() ? t_pos.data_ptr<scalar_t>() : nullptr);
      }
    });
    return {ray_indices, t_starts, t_ends, t_pos, offsets, counts};
  }
  auto counts = at::zeros({n}, rays_o.options().dtype(at::kLong));
  auto keep = at::empty({n, n_samples}, rays_o.options().dtype(at::kByte));
  at::Tensor offsets, ray_indices, t_starts, t_ends, t_pos;
  AT_DISPATCH_FLOATING_TYPES(dt, "march_rays", [&] {
    const scalar_t* nz = noise.has_value() ? noise->data_ptr<scalar_t>() : nullptr;
    if (n > 0) {
      ST_DISPATCH_DEVICE(dev, march_count<scalar_t>, mp, rays_o.data_ptr<scalar_t>(),
                         rays_d.data_ptr<scalar_t>(), t_near.data_ptr<scalar_t>(),
                         t_far.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(), occ, nz,
                         keep.data_ptr<uint8_t>(), counts.data_ptr<int64_t>());
    }
    auto inclusive = at::cumsum(counts, 0);
    offsets = inclusive - counts;
    const int64_t total = n > 0 ? inclusive[n - 1].item<int64_t>() : 0;
    ray_indices = at::empty({total}, counts.options());
    t_starts = at::empty({total}, rays_o.options());
    t_ends = at::empty({total}, rays_o.options());
    t_pos = at::empty({noise.has_value() ? total : 0}, rays_o.options());
    if (total > 0) {
      ST_DISPATCH_DEVICE(dev, march_fill<scalar_t>, mp, rays_o.data_ptr<scalar_t>(),
                         rays_d.data_ptr<scalar_t>(), t_near.data_ptr<scalar_t>(),
                         t_far.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(), nz,
                         keep.data_ptr<uint8_t>(), offsets.data_ptr<int64_t>(),
                         ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<scalar_t>(),
                         t_ends.data_ptr<scalar_t>(),
                         noise.has_value() ? t_pos.data_ptr<scalar_t>() : nullptr);
    }
  });
  return {ray_indices, t_starts, t_ends, t_pos, offsets, counts};
}

// ------------------------------------------------------------------------ composite

st::CompositeDims composite_dims(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                 const at::Tensor& t_starts, const at::Tensor& t_ends,
                                 const at::Tensor& offsets, const at::Tensor& counts,
                                 const c10::optional<at::Tensor>& extras,
                                 const c10::optional<at::Tensor>& bg) {
  const auto dev = sigmas.device();
  const auto dt = sigmas.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "sigmas must be float32 or float64");
  TORCH_CHECK(sigmas.dim() == 1, "sigmas must be [S]");
  const int64_t S = sigmas.size(0);
  check_float(sigmas, "sigmas", dt, dev);
  check_float(rgbs, "rgbs", dt, dev);
  check_float(t_starts, "t_starts", dt, dev);
  check_float(t_ends, "t_ends", dt, dev);
  check_float(offsets, "offsets", at::kLong, dev);
  check_float(counts, "counts", at::kLong, dev);
  TORCH_CHECK(rgbs.dim() == 2 && rgbs.size(0) == S, "rgbs must be [S, C]");
  TORCH_CHECK(t_starts.numel() == S && t_ends.numel() == S, "t_starts/t_ends must be [S]");
  TORCH_CHECK(offsets.dim() == 1 && counts.sizes() == offsets.sizes(),
              "offsets/counts must be [N]");
  st::CompositeDims dm{};
  dm.n_rays = offsets.size(0);
  dm.n_samples = S;
  dm.n_color = static_cast<int>(rgbs.size(1));
  dm.n_extras = 0;
  if (extras.has_value()) {
    check_float(*extras, "extras", dt, dev);
    TORCH_CHECK(extras->dim() == 2 && extras->size(0) == S, "extras must be [S, K]");
    dm.n_extras = static_cast<int>(extras->size(1));
  }
  dm.has_bg = bg.has_value();
  if (dm.has_bg) {
    check_float(*bg, "bg", dt, dev);
    TORCH_CHECK(bg->dim() == 2 && bg->size(0) == dm.n_rays && bg->size(1) == dm.n_color,
                "bg must be [N, C]");
  }
  return dm;
}

template <typename T>
const T* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

template <typename scalar_t>
st::CompositeInputs<scalar_t> composite_inputs(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                               const at::Tensor& t_starts,
                                               const at::Tensor& t_ends,
                                               const c10::optional<at::Tensor>& extras,
                                               const c10::optional<at::Tensor>& bg) {
  return {sigmas.data_ptr<scalar_t>(), rgbs.data_ptr<scalar_t>(), t_starts.data_ptr<scalar_t>(),
          t_ends.data_ptr<scalar_t>(), opt_ptr<scalar_t>(extras), opt_ptr<scalar_t>(bg)};
}

// Returns (weights [S], transmittance [S], alphas [S], opacity [N], depth [N],
// color [N, C], extras [N, K], expneg [S]); expneg = exp(-sigma * delta), which
// composite_backward takes back.
std::vector<at::Tensor> composite_forward(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                          const at::Tensor& t_starts, const at::Tensor& t_ends,
                                          const at::Tensor& offsets, const at::Tensor& counts,
                                          const c10::optional<at::Tensor>& extras,
                                          const c10::optional<at::Tensor>& bg) {
  const st::CompositeDims dm =
      composite_dims(sigmas, rgbs, t_starts, t_ends, offsets, counts, extras, bg);
  const auto opts = sigmas.options();
  auto weights = at::empty({dm.n_samples}, opts);
  auto trans = at::empty({dm.n_samples}, opts);
  auto alphas = at::empty({dm.n_samples}, opts);
  auto expneg = at::empty({dm.n_samples}, opts);
  auto opacity = at::empty({dm.n_rays}, opts);
  auto depth = at::empty({dm.n_rays}, opts);
  auto color = at::empty({dm.n_rays, dm.n_color}, opts);
  auto extras_out = at::empty({dm.n_rays, dm.n_extras}, opts);
  if (dm.n_rays > 0) {
    AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "composite_forward", [&] {
      const st::CompositeOutputs<scalar_t> out{
          weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(), alphas.data_ptr<scalar_t>(),
          expneg.data_ptr<scalar_t>(),  opacity.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(),
          color.data_ptr<scalar_t>(),   extras_out.data_ptr<scalar_t>()};
      ST_DISPATCH_DEVICE(sigmas.device(), composite_forward<scalar_t>, dm,
                         offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                         composite_inputs<scalar_t>(sigmas, rgbs, t_starts, t_ends, extras, bg),
                         out);
    });
  }
  return {weights, trans, alphas, opacity, depth, color, extras_out, expneg};
}

// Returns (grad_sigmas [S], grad_rgbs [S, C], grad_extras [S, K], grad_bg [N, C]).
std::vector<at::Tensor> composite_backward(
    const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& t_starts,
    const at::Tensor& t_ends, const at::Tensor& offsets, const at::Tensor& counts,
    const c10::optional<at::Tensor>& extras, const c10::optional<at::Tensor>& bg,
    const at::Tensor& weights, const at::Tensor& trans, const at::Tensor& expneg,
    const at::Tensor& opacity, const c10::optional<at::Tensor>& g_weights, const c10::optional<at::Tensor>& g_trans,
    const c10::optional<at::Tensor>& g_alphas, const at::Tensor& g_opacity,
    const at::Tensor& g_depth, const at::Tensor& g_color, const at::Tensor& g_extras) {
  const st::CompositeDims dm =
      composite_dims(sigmas, rgbs, t_starts, t_ends, offsets, counts, extras, bg);
  const auto dev = sigmas.device();
  const auto dt = sigmas.scalar_type();
  check_float(weights, "weights", dt, dev);
  check_float(trans, "transmittance", dt, dev);
  check_float(expneg, "expneg", dt, dev);
  check_float(opacity, "opacity", dt, dev);
  check_float(g_opacity, "grad of opacity", dt, dev);
  check_float(g_depth, "grad of depth", dt, dev);
  check_float(g_color, "grad of color", dt, dev);
  check_float(g_extras, "grad of extras", dt, dev);
  for (const auto* t : {&g_weights, &g_trans, &g_alphas}) {
    if (t->has_value()) {
      check_float(**t, "grad of a per-sample output", dt, dev);
      TORCH_CHECK((*t)->numel() == dm.n_samples, "per-sample gradient must be [S]");
    }
  }
  TORCH_CHECK(weights.numel() == dm.n_samples && trans.numel() == dm.n_samples &&
                  expneg.numel() == dm.n_samples && opacity.numel() == dm.n_rays,
              "composite_backward: saved forward outputs do not match");
  TORCH_CHECK(g_color.numel() == dm.n_rays * dm.n_color &&
                  g_extras.numel() == dm.n_rays * dm.n_extras &&
                  g_opacity.numel() == dm.n_rays && g_depth.numel() == dm.n_rays,
              "composite_backward: gradient shapes do not match");
  const auto opts = sigmas.options();
  auto grad_sigmas = at::empty({dm.n_samples}, opts);
  auto grad_rgbs = at::empty({dm.n_samples, dm.n_color}, opts);
  auto grad_extras = at::empty({dm.n_samples, dm.n_extras}, opts);
  auto grad_bg = at::empty({dm.has_bg ? dm.n_rays : 0, dm.n_color}, opts);
  if (dm.n_rays > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "composite_backward", [&] {
      const st::CompositeGrads<scalar_t> g{
          opt_ptr<scalar_t>(g_weights), opt_ptr<scalar_t>(g_trans), opt_ptr<scalar_t>(g_alphas),
          g_opacity.data_ptr<scalar_t>(), g_depth.data_ptr<scalar_t>(),
          g_color.data_ptr<scalar_t>(),   g_extras.data_ptr<scalar_t>()};
      const st::CompositeInputGrads<scalar_t> grad{
          grad_sigmas.data_ptr<scalar_t>(), grad_rgbs.data_ptr<scalar_t>(),
          grad_extras.data_ptr<scalar_t>(), dm.has_bg ? grad_bg.data_ptr<scalar_t>() : nullptr};
      ST_DISPATCH_DEVICE(dev, composite_backward<scalar_t>, dm, offsets.data_ptr<int64_t>(),
                         counts.data_ptr<int64_t>(),
                         composite_inputs<scalar_t>(sigmas, rgbs, t_starts, t_ends, extras, bg),
                         weights.data_ptr<scalar_t>(), trans.data_ptr<scalar_t>(),
                         expneg.data_ptr<scalar_t>(), opacity.data_ptr<scalar_t>(), g, grad);
    });
  }
  return {grad_sigmas, grad_rgbs, grad_extras, grad_bg};
}

// The autograd function of compositing, in C++: at the demo's sizes (2048 rays, ~18k
// samples) the kernels take ~0.15 ms per forward + backward and a Python
// torch.autograd.Function added ~0.08 ms around them. Inputs: sigmas [S], rgbs [S, C],
// t_starts, t_ends [S], offsets, counts [N], extras [S, K] and bg [N, C] (optional);
// outputs (weights, transmittance, alphas [S], opacity, depth [N],
// color [N, C], extras [N, K]); gradients for sigmas, rgbs, extras and bg, first order.
class CompositeFunction : public torch::autograd::Function<CompositeFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& sigmas, const at::Tensor& rgbs,
      const at::Tensor& t_starts, const at::Tensor& t_ends, const at::Tensor& offsets,
      const at::Tensor& counts, const c10::optional<at::Tensor>& extras,
      const c10::optional<at::Tensor>& bg) {
    std::vector<at::Tensor> outs =
        composite_forward(sigmas, rgbs, t_starts, t_ends, offsets, counts, extras, bg);
    // weights, transmittance, opacity and exp(-sigma delta) for the backward
    ctx->save_for_backward({sigmas, rgbs, t_starts, t_ends, offsets, counts,
                            extras.value_or(at::Tensor()), bg.value_or(at::Tensor()), outs[0],
                            outs[1], outs[3], outs[7]});
    ctx->set_materialize_grads(false);
    outs.pop_back();
    return outs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list g) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the native composite is differentiable once: backward with create_graph=True "
                "needs backend='torch'");
    const torch::autograd::variable_list v = ctx->get_saved_variables();
    const at::Tensor &sigmas = v[0], &rgbs = v[1], &extras = v[6], &bg = v[7];
    const int64_t N = v[4].size(0), C = rgbs.size(1), K = extras.defined() ? extras.size(1) : 0;
    const auto dtype = sigmas.scalar_type();
    auto prep = [&](const at::Tensor& t) -> at::Tensor {
      return t.defined() ? t.to(dtype).contiguous() : t;
    };
    auto or_zeros = [&](const at::Tensor& t, at::IntArrayRef sizes) {
      return t.defined() ? prep(t) : at::zeros(sizes, sigmas.options());
    };
    std::vector<at::Tensor> grads = composite_backward(
        sigmas, rgbs, v[2], v[3], v[4], v[5], optional(extras), optional(bg), v[8], v[9], v[11],
        v[10], optional(prep(g[0])), optional(prep(g[1])), optional(prep(g[2])),
        or_zeros(g[3], {N}), or_zeros(g[4], {N}), or_zeros(g[5], {N, C}), or_zeros(g[6], {N, K}));
    return {grads[0], grads[1], at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            extras.defined() ? grads[2] : at::Tensor(), bg.defined() ? grads[3] : at::Tensor()};
  }

 private:
  static c10::optional<at::Tensor> optional(const at::Tensor& t) {
    return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
  }
};

// Differentiable compositing (CompositeFunction): the 7 outputs of composite_forward.
std::vector<at::Tensor> composite(const at::Tensor& sigmas, const at::Tensor& rgbs,
                                  const at::Tensor& t_starts, const at::Tensor& t_ends,
                                  const at::Tensor& offsets, const at::Tensor& counts,
                                  const c10::optional<at::Tensor>& extras,
                                  const c10::optional<at::Tensor>& bg) {
  return CompositeFunction::apply(sigmas, rgbs, t_starts, t_ends, offsets, counts, extras, bg);
}

// Whether offsets/counts [N] (int64, CPU) describe runs inside S packed samples:
// offsets >= 0, counts >= 0, offsets + counts <= S.
bool packing_ok(const at::Tensor& offsets, const at::Tensor& counts, int64_t n_samples) {
  check_float(offsets, "offsets", at::kLong, offsets.device());
  check_float(counts, "counts", at::kLong, offsets.device());
  TORCH_CHECK(!offsets.is_cuda(), "packing_ok checks CPU tensors");
  TORCH_CHECK(offsets.numel() == counts.numel(), "offsets/counts must have one size");
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t* c = counts.data_ptr<int64_t>();
  bool ok = true;
  for (int64_t r = 0; r < offsets.numel(); ++r) {
    ok &= o[r] >= 0 && c[r] >= 0 && o[r] <= n_samples - c[r];
  }
  return ok;
}

// ------------------------------------------------------------------ alive-ray loop

// Returns (t_starts [A, k], t_ends [A, k], count [A]); next_index [N] (int64) is updated
// in place at the rows in alive [A] (int64). occupied / occupied_bits / bits_res as for
// march_rays.
std::vector<at::Tensor> march_next(const at::Tensor& rays_o, const at::Tensor& rays_d,
                                   const at::Tensor& t_near, const at::Tensor& t_far,
                                   at::Tensor next_index, const at::Tensor& alive,
                                   const c10::optional<at::Tensor>& occupied,
                                   const at::Tensor& aabb, int64_t n_samples, int64_t k,
                                   const c10::optional<at::Tensor>& occupied_bits,
                                   int64_t bits_res) {
  check_rays(rays_o, rays_d, aabb);
  const auto dev = rays_o.device();
  const auto dt = rays_o.scalar_type();
  const int64_t n = rays_o.size(0);
  check_float(t_near, "t_near", dt, dev);
  check_float(t_far, "t_far", dt, dev);
  check_float(next_index, "next_index", at::kLong, dev);
  check_float(alive, "alive", at::kLong, dev);
  TORCH_CHECK(t_near.numel() == n && t_far.numel() == n && next_index.numel() == n,
              "t_near/t_far/next_index must be [N]");
  TORCH_CHECK(alive.dim() == 1, "alive must be [A]");
  TORCH_CHECK(n_samples >= 1 && n_samples <= (int64_t{1} << 30), "n_samples out of range");
  TORCH_CHECK(k >= 1 && k <= (int64_t{1} << 30), "k out of range");
  st::MarchParams mp{};
  mp.n_rays = n;
  mp.n_steps = static_cast<int>(n_samples);
  mp.perturb = false;
  const uint8_t* occ = occupancy_arg(occupied, occupied_bits, bits_res, dev, &mp);
  const int64_t n_alive = alive.size(0);
  auto t_starts = at::empty({n_alive, k}, rays_o.options());
  auto t_ends = at::empty({n_alive, k}, rays_o.options());
  auto count = at::empty({n_alive}, alive.options());
  if (n_alive > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "march_next", [&] {
      ST_DISPATCH_DEVICE(dev, march_next<scalar_t>, mp, n_alive, static_cast<int>(k),
                         alive.data_ptr<int64_t>(), rays_o.data_ptr<scalar_t>(),
                         rays_d.data_ptr<scalar_t>(), t_near.data_ptr<scalar_t>(),
                         t_far.data_ptr<scalar_t>(), aabb.data_ptr<scalar_t>(), occ,
                         next_index.data_ptr<int64_t>(), t_starts.data_ptr<scalar_t>(),
                         t_ends.data_ptr<scalar_t>(), count.data_ptr<int64_t>());
    });
  }
  return {t_starts, t_ends, count};
}

// One compositing step of the alive rays. Per round: sigmas, t_starts, t_ends [A, k],
// rgbs [A, k, C] (None: weights only, the state is not touched), extras [A, k, E] or None,
// count and alive [A] (int64). State, updated in place: trans, opacity, depth [N],
// color [N, C], extras_state [N, E] (exactly when extras is given, or with rgbs None).
// Returns the weights [A, k].
at::Tensor composite_step(const at::Tensor& sigmas, const c10::optional<at::Tensor>& rgbs,
                          const at::Tensor& t_starts, const at::Tensor& t_ends,
                          const at::Tensor& count, const at::Tensor& alive,
                          const c10::optional<at::Tensor>& extras, at::Tensor trans,
                          at::Tensor opacity, at::Tensor depth, at::Tensor color,
                          const c10::optional<at::Tensor>& extras_state, double early_stop) {
  const auto dev = trans.device();
  const auto dt = trans.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "the state must be float32 or float64");
  TORCH_CHECK(sigmas.dim() == 2, "sigmas must be [A, k]");
  const int64_t A = sigmas.size(0), k = sigmas.size(1), N = trans.numel();
  check_float(sigmas, "sigmas", dt, dev);
  check_float(t_starts, "t_starts", dt, dev);
  check_float(t_ends, "t_ends", dt, dev);
  check_float(count, "count", at::kLong, dev);
  check_float(alive, "alive", at::kLong, dev);
  check_float(trans, "transmittance", dt, dev);
  check_float(opacity, "opacity", dt, dev);
  check_float(depth, "depth", dt, dev);
  check_float(color, "color", dt, dev);
  TORCH_CHECK(t_starts.sizes() == sigmas.sizes() && t_ends.sizes() == sigmas.sizes(),
              "t_starts/t_ends must be [A, k] like sigmas");
  TORCH_CHECK(count.numel() == A && alive.numel() == A, "count/alive must be [A]");
  TORCH_CHECK(opacity.numel() == N && depth.numel() == N && color.dim() == 2 &&
                  color.size(0) == N,
              "opacity/depth must be [N] and color [N, C]");
  st::StepDims dm{};
  dm.n_alive = A;
  dm.n_rays = N;
  dm.k = static_cast<int>(k);
  dm.n_color = static_cast<int>(color.size(1));
  dm.n_extras = 0;
  dm.accumulate = rgbs.has_value();
  if (dm.accumulate) {
    check_float(*rgbs, "rgbs", dt, dev);
    TORCH_CHECK(rgbs->dim() == 3 && rgbs->size(0) == A && rgbs->size(1) == k &&
                    rgbs->size(2) == dm.n_color,
                "rgbs must be [A, k, C] with C = color's channels");
    TORCH_CHECK(extras.has_value() == extras_state.has_value(),
                "extras and the extras state come together");
    if (extras.has_value()) {
      check_float(*extras, "extras", dt, dev);
      check_float(*extras_state, "extras state", dt, dev);
      TORCH_CHECK(extras_state->dim() == 2 && extras_state->size(0) == N,
                  "the extras state must be [N, E]");
      dm.n_extras = static_cast<int>(extras_state->size(1));
      TORCH_CHECK(extras->dim() == 3 && extras->size(0) == A && extras->size(1) == k &&
                      extras->size(2) == dm.n_extras,
                  "extras must be [A, k, E]");
    }
  }
  auto weights = at::empty({A, k}, sigmas.options());
  if (A > 0 && k > 0) {
    AT_DISPATCH_FLOATING_TYPES(dt, "composite_step", [&] {
      const st::StepInputs<scalar_t> in{
          sigmas.data_ptr<scalar_t>(), opt_ptr<scalar_t>(rgbs),    t_starts.data_ptr<scalar_t>(),
          t_ends.data_ptr<scalar_t>(), dm.n_extras > 0 ? extras->data_ptr<scalar_t>() : nullptr,
          count.data_ptr<int64_t>(),   alive.data_ptr<int64_t>()};
      const st::RayAccumulators<scalar_t> acc{
          trans.data_ptr<scalar_t>(), opacity.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(),
          color.data_ptr<scalar_t>(),
          dm.n_extras > 0 ? extras_state->data_ptr<scalar_t>() : nullptr};
      ST_DISPATCH_DEVICE(dev, composite_step<scalar_t>, dm, static_cast<scalar_t>(early_stop),
                         in, acc, weights.data_ptr<scalar_t>());
    });
  }
  return weights;
}

// ------------------------------------------------------------------- density helpers

at::Tensor morton3_encode(const at::Tensor& ix, const at::Tensor& iy, const at::Tensor& iz) {
  for (const auto* t : {&ix, &iy, &iz}) check_float(*t, "coordinate", at::kLong, ix.device());
  TORCH_CHECK(iy.sizes() == ix.sizes() && iz.sizes() == ix.sizes(),
              "ix, iy, iz must have the same shape");
  auto codes = at::empty_like(ix);
  if (ix.numel() > 0)
    ST_DISPATCH_DEVICE(ix.device(), morton3_encode, ix.numel(), ix.data_ptr<int64_t>(),
                       iy.data_ptr<int64_t>(), iz.data_ptr<int64_t>(), codes.data_ptr<int64_t>());
  return codes;
}

std::vector<at::Tensor> morton3_decode(const at::Tensor& codes) {
  check_float(codes, "codes", at::kLong, codes.device());
  auto ix = at::empty_like(codes), iy = at::empty_like(codes), iz = at::empty_like(codes);
  if (codes.numel() > 0)
    ST_DISPATCH_DEVICE(codes.device(), morton3_decode, codes.numel(), codes.data_ptr<int64_t>(),
                       ix.data_ptr<int64_t>(), iy.data_ptr<int64_t>(), iz.data_ptr<int64_t>());
  return {ix, iy, iz};
}

at::Tensor pack_bitfield(const at::Tensor& cells) {
  check_float(cells, "cells", at::kBool, cells.device());
  const int64_t n = cells.numel();
  auto bits = at::empty({(n + 7) / 8}, cells.options().dtype(at::kByte));
  if (n > 0)
    ST_DISPATCH_DEVICE(cells.device(), pack_bitfield, n,
                       reinterpret_cast<const uint8_t*>(cells.data_ptr<bool>()),
                       bits.data_ptr<uint8_t>());
  return bits;
}

at::Tensor dilate_grid(const at::Tensor& cells, int64_t radius) {
  check_float(cells, "cells", at::kBool, cells.device());
  TORCH_CHECK(cells.dim() == 3, "dilate_grid: cells must be [X, Y, Z]");
  TORCH_CHECK(radius >= 0, "dilate_grid: radius must be >= 0");
  auto out = at::empty_like(cells);
  if (cells.numel() > 0)
    ST_DISPATCH_DEVICE(cells.device(), dilate_grid, cells.size(0), cells.size(1), cells.size(2),
                       radius, reinterpret_cast<const uint8_t*>(cells.data_ptr<bool>()),
                       reinterpret_cast<uint8_t*>(out.data_ptr<bool>()));
  return out;
}

at::Tensor unpack_bitfield(const at::Tensor& bits, int64_t n_cells) {
  check_float(bits, "bits", at::kByte, bits.device());
  TORCH_CHECK(n_cells >= 0 && n_cells <= 8 * bits.numel(), "n_cells out of range");
  auto cells = at::empty({n_cells}, bits.options().dtype(at::kBool));
  if (n_cells > 0)
    ST_DISPATCH_DEVICE(bits.device(), unpack_bitfield, n_cells, bits.data_ptr<uint8_t>(),
                       reinterpret_cast<uint8_t*>(cells.data_ptr<bool>()));
  return cells;
}

// ------------------------------------------------------------ CPU instruction set

const char* isa_name(st::cpu::CpuIsa isa) {
  switch (isa) {
    case st::cpu::CpuIsa::kAvx512:
      return "avx512";
    case st::cpu::CpuIsa::kAvx2:
      return "avx2";
    default:
      return "base";
  }
}

// The instruction set of the vectorised float32 CPU loops ("avx512", "avx2" or "base").
std::string cpu_isa() { return isa_name(st::cpu::cpu_isa()); }

// Use a lower instruction set (tests, benchmarks); returns the one in use afterwards.
std::string set_cpu_isa(const std::string& name) {
  st::cpu::CpuIsa isa = st::cpu::CpuIsa::kBase;
  if (name == "avx512") {
    isa = st::cpu::CpuIsa::kAvx512;
  } else if (name == "avx2") {
    isa = st::cpu::CpuIsa::kAvx2;
  } else {
    TORCH_CHECK(name == "base", "unknown instruction set ", name, " (avx512, avx2 or base)");
  }
  TORCH_CHECK(st::cpu::set_cpu_isa(isa), "this CPU does not support ", name);
  return cpu_isa();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "synctalk native ops (see synctalk/ops/native.py)";
#ifdef SYNCTALK_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("grid_encode_forward", &grid_encode_forward);
  m.def("grid_encode_backward", &grid_encode_backward);
  m.def("ray_aabb", &ray_aabb);
  m.def("march_rays", &march_rays);
  m.def("composite_forward", &composite_forward);
  m.def("composite_backward", &composite_backward);
  m.def("composite", &composite);
  m.def("packing_ok", &packing_ok);
  m.def("march_next", &march_next);
  m.def("composite_step", &composite_step);
  m.def("morton3_encode", &morton3_encode);
  m.def("morton3_decode", &morton3_decode);
  m.def("pack_bitfield", &pack_bitfield);
  m.def("unpack_bitfield", &unpack_bitfield);
  m.def("dilate_grid", &dilate_grid);
  m.def("cpu_isa", &cpu_isa);
  m.def("buffer_cache_info", &buffer_cache_info);
  m.def("buffer_cache_clear", &buffer_cache_clear);
  m.def("set_cpu_isa", &set_cpu_isa);
}
