//! [`Exec`] on a real GPU: cudarc's driver API, cuBLAS and NVRTC, all loaded at run time.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::{Arg, Buffer, CudaResult, Exec, Kernel, Launch, Operand, PIXEL_SLOTS, Product};

/// The CUDA C source of the encoder's kernels.
const KERNELS: &str = include_str!("kernels.cu");

/// The CUDA libraries this machine lacks, named as a user installs them; empty when all load.
pub(crate) fn missing_libraries() -> Vec<&'static str> {
    let mut missing = Vec::new();
    // SAFETY: each call only tries to open a shared library by name.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("libcuda.so.1 (the NVIDIA driver)");
        }
        if !cudarc::cublas::sys::is_culib_present() {
            missing.push("libcublas.so.13 (cuBLAS)");
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            missing.push("libnvrtc.so.13 (NVRTC)");
        }
    }
    missing
}

/// Compiles the encoder's kernels to PTX for `arch` (such as `compute_90`); needs NVRTC,
/// not a GPU.
pub(crate) fn compile_kernels(arch: &str) -> CudaResult<cudarc::nvrtc::Ptx> {
    let options = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++14".to_string()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, options)
        .map_err(|e| format!("compiling the encoder kernels for {arch}: {e}"))
}

/// A cuBLAS handle bound to the driver's stream.
struct Blas(blas_sys::cublasHandle_t);

// SAFETY: the handle is used only through `Exec`, whose calls the encoder serialises under
// its lock; cuBLAS handles may move between threads.
unsafe impl Send for Blas {}
// SAFETY: as above: never used by two threads at once.
unsafe impl Sync for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by `create_handle`, dropped once.
        let _ = unsafe { blas::destroy_handle(self.0) };
    }
}

/// One CUDA device with the encoder's kernels loaded for one operand type.
pub(crate) struct Driver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The kernels in [`Kernel::ALL`] order, indexed by `Kernel as usize`.
    kernels: Vec<CudaFunction>,
    blas: Blas,
    operand: Operand,
    /// The stream pixels are copied in on, beside the compute stream.
    copies: Arc<CudaStream>,
    /// Per pixel slot: its copy has arrived; the compute stream has read it. (The encoder
    /// lands a batch, past its copy out, before it queues the next copy into the same slot,
    /// so `released` is already passed then; the copy stream waits on it all the same, so
    /// that the slot's safety does not rest on the host's order alone.)
    arrived: [CudaEvent; PIXEL_SLOTS],
    released: [CudaEvent; PIXEL_SLOTS],
    /// Per slot: the copy out and everything before it are done (a blocking-sync event, so
    /// that waiting on it sleeps).
    out: [CudaEvent; PIXEL_SLOTS],
}

impl Driver {
    /// Opens device `ordinal`; also returns its name and compute capability.
    pub(crate) fn open(ordinal: usize, operand: Operand) -> CudaResult<(Driver, String)> {
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("opening the device: {e}"))?;
        // SAFETY: cudarc's own events would order its buffers' uses across streams; the
        // encoder orders them itself. Everything but the pixel copies runs on the compute
        // stream, in order; pixel buffers are zeroed and synchronised in `alloc` before the
        // copy stream writes them, the compute stream waits for each copy (`await_pixels`),
        // and a buffer is freed only after the batches that used it have landed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let attr = |a| ctx.attribute(a).map_err(|e| format!("reading device attributes: {e}"));
        let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        if operand == Operand::Bf16 && major < 8 {
            return Err(format!(
                "bf16 needs compute capability 8.0 or newer; this device has {major}.{minor} (use f16 or f32)"
            ));
        }
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".to_string());
        let ptx = compile_kernels(&format!("compute_{major}{minor}"))?;
        let module =
            ctx.load_module(ptx).map_err(|e| format!("loading the encoder kernels: {e}"))?;
        let kernels = Kernel::ALL
            .iter()
            .map(|&k| {
                let name = k.name(operand);
                module.load_function(&name).map_err(|e| format!("kernel {name}: {e}"))
            })
            .collect::<CudaResult<Vec<_>>>()?;
        let blas =
            Blas(blas::create_handle().map_err(|e| format!("creating a cuBLAS handle: {e}"))?);
        // SAFETY: a live handle and the context's stream.
        unsafe { blas::set_stream(blas.0, stream.cu_stream() as _) }
            .map_err(|e| format!("binding cuBLAS to the stream: {e}"))?;
        let copies =
            ctx.new_stream().map_err(|e| format!("creating the stream pixels copy on: {e}"))?;
        let event = |flags| ctx.new_event(flags).map_err(|e| format!("creating an event: {e}"));
        let blocking = Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC);
        let (arrived, released, out) = (
            [event(None)?, event(None)?],
            [event(None)?, event(None)?],
            [event(blocking)?, event(blocking)?],
        );
        let description = format!("{name} (compute {major}.{minor})");
        let driver = Driver { ctx, stream, kernels, blas, operand, copies, arrived, released, out };
        Ok((driver, description))
    }

    fn data_type(&self, f32: bool) -> blas_sys::cudaDataType {
        match (f32, self.operand) {
            (true, _) | (_, Operand::F32) => blas_sys::cudaDataType::CUDA_R_32F,
            (_, Operand::Bf16) => blas_sys::cudaDataType::CUDA_R_16BF,
            (_, Operand::F16) => blas_sys::cudaDataType::CUDA_R_16F,
        }
    }

    fn bind(&self) -> CudaResult<()> {
        self.ctx.bind_to_thread().map_err(|e| format!("binding the device to this thread: {e}"))
    }

    /// Binds the context for a wait. cudarc's `bind_to_thread` first returns any error a drop
    /// stored and then does not bind, and a wait that returned early would hand back memory
    /// a copy still uses; the stored error is reported after the wait instead.
    fn bind_for_wait(&self) -> CudaResult<()> {
        bind_context(&self.ctx)
    }

    /// An error an earlier call stored (cudarc records failed frees and the like), if any.
    fn stored_error(&self) -> CudaResult<()> {
        self.ctx.check_err().map_err(|e| format!("an earlier device call failed: {e}"))
    }
}

/// Makes `ctx` current on this thread, whatever error it has stored.
fn bind_context(ctx: &CudaContext) -> CudaResult<()> {
    // SAFETY: `ctx` is alive for the call; setting the current context has no other effect.
    unsafe { cudarc::driver::result::ctx::set_current(ctx.cu_ctx()) }
        .map_err(|e| format!("binding the device to this thread: {e}"))
}

impl Exec for Driver {
    fn alloc(&self, bytes: usize) -> CudaResult<Buffer> {
        self.bind()?;
        let slice = self
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| format!("allocating {bytes} bytes: {e}"))?;
        // Zeroed on the compute stream; the copy stream writes pixel buffers too, and does not
        // wait for that stream, so the zeroing ends here (buffers are made once per size).
        self.stream.synchronize().map_err(|e| format!("allocating {bytes} bytes: {e}"))?;
        let ptr = slice.device_ptr(&self.stream).0;
        Ok(Buffer { ptr, bytes, _owner: Box::new(slice) })
    }

    fn upload(&self, bytes: &[u8]) -> CudaResult<Buffer> {
        self.bind()?;
        let slice = self
            .stream
            .clone_htod(bytes)
            .map_err(|e| format!("copying weights to the device: {e}"))?;
        let ptr = slice.device_ptr(&self.stream).0;
        Ok(Buffer { ptr, bytes: bytes.len(), _owner: Box::new(slice) })
    }

    fn host_memory(&self, values: usize) -> CudaResult<Box<dyn aesthete_tensor::PixelMemory>> {
        Ok(Box::new(PinnedPixels::new(&self.ctx, values)?))
    }

    unsafe fn copy_in_ahead(&self, slot: usize, dst: u64, src: &[f32]) -> CudaResult<()> {
        self.bind()?;
        let fail = |e| format!("copying pixels to the device: {e}");
        self.copies.wait(&self.released[slot]).map_err(fail)?;
        // SAFETY: the buffer at `dst` holds at least `src.len()` f32 values and the compute
        // stream has released it (the wait above); the caller keeps `src` as it is until the
        // copy is done (it may run after this returns).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.copies.cu_stream()) }
            .map_err(fail)?;
        self.arrived[slot].record(&self.copies).map_err(fail)
    }

    fn await_pixels(&self, slot: usize) -> CudaResult<()> {
        self.stream.wait(&self.arrived[slot]).map_err(|e| format!("waiting for pixels: {e}"))
    }

    fn release_pixels(&self, slot: usize) -> CudaResult<()> {
        self.released[slot].record(&self.stream).map_err(|e| format!("releasing pixels: {e}"))
    }

    unsafe fn copy_out_later(&self, slot: usize, src: u64, dst: &mut [f32]) -> CudaResult<()> {
        self.bind()?;
        let fail = |e| format!("copying embeddings back: {e}");
        // SAFETY: the buffer at `src` holds at least `dst.len()` f32 values; `dst` is
        // page-locked and left alone until `await_out` (the caller's promise), so the copy may
        // run after this returns.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(fail)?;
        self.out[slot].record(&self.stream).map_err(fail)
    }

    fn await_out(&self, slot: usize) -> CudaResult<()> {
        self.bind_for_wait()?;
        // SAFETY: a live event of this context.
        unsafe { cudarc::driver::result::event::synchronize(self.out[slot].cu_event()) }
            .map_err(|e| format!("running the encoder: {e}"))?;
        self.stored_error()
    }

    fn settle(&self) -> CudaResult<()> {
        self.bind_for_wait()?;
        cudarc::driver::result::ctx::synchronize()
            .map_err(|e| format!("waiting for the device: {e}"))?;
        self.stored_error()
    }

    fn launch(&self, kernel: Kernel, grid: Launch, args: &[Arg]) -> CudaResult<()> {
        let mut builder = self.stream.launch_builder(&self.kernels[kernel as usize]);
        for arg in args {
            match arg {
                Arg::Ptr(v) => builder.arg(v),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid.blocks, grid.rows, 1),
            block_dim: (grid.threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `Run` pushes each kernel's arguments in its declared order and types, and
        // every address is inside a buffer sized for the batch.
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(|e| format!("kernel {}: {e}", kernel.name(self.operand)))
    }

    fn product(&self, p: &Product) -> CudaResult<()> {
        let op = |t| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (1f32, p.beta);
        let (m, n, k) = (p.m as i32, p.n as i32, p.k as i32);
        // SAFETY: the matrices lie inside buffers of these sizes (`Run` computes them from
        // the batch); alpha and beta are host f32, as the f32 compute type reads them.
        unsafe {
            blas::gemm_strided_batched_ex(
                self.blas.0,
                op(p.transpose_a),
                op(false),
                m,
                n,
                k,
                (&alpha as *const f32).cast::<c_void>(),
                p.a.ptr as *const c_void,
                self.data_type(p.a.f32),
                p.a.ld as i32,
                p.a.stride as i64,
                p.b.ptr as *const c_void,
                self.data_type(p.b.f32),
                p.b.ld as i32,
                p.b.stride as i64,
                (&beta as *const f32).cast::<c_void>(),
                p.c.ptr as *mut c_void,
                self.data_type(p.c.f32),
                p.c.ld as i32,
                p.c.stride as i64,
                p.batch as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("matrix product {}×{}×{} ×{}: {e}", p.m, p.n, p.k, p.batch))
    }
}

/// Page-locked host memory for pixel values (`cuMemHostAlloc`, portable, not write-combined:
/// preprocessing writes it and may read it back), freed with its context bound.
struct PinnedPixels {
    ptr: *mut f32,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the memory belongs to this value alone; page-locked host memory may be used and
// freed from any thread (the free binds the context first).
unsafe impl Send for PinnedPixels {}
// SAFETY: shared access only reads.
unsafe impl Sync for PinnedPixels {}

impl PinnedPixels {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> CudaResult<PinnedPixels> {
        let bytes = len.checked_mul(4).ok_or("pixel memory size overflows")?;
        ctx.bind_to_thread().map_err(|e| format!("binding the device to this thread: {e}"))?;
        let flags = cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: a plain allocation; its values are set below before any is read.
        let ptr = unsafe { cudarc::driver::result::malloc_host(bytes.max(4), flags) }
            .map_err(|e| format!("allocating {bytes} bytes of page-locked host memory: {e}"))?
            .cast::<f32>();
        // SAFETY: `ptr` holds `len` f32 values (at least one, aligned as cuMemHostAlloc
        // aligns); zero bits are 0.0.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedPixels { ptr, len, ctx: ctx.clone() })
    }
}

impl aesthete_tensor::PixelMemory for PinnedPixels {
    fn values(&self) -> &[f32] {
        // SAFETY: `len` initialised values, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn values_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedPixels {
    fn drop(&mut self) {
        let _ = bind_context(&self.ctx);
        // SAFETY: allocated by `malloc_host`, freed once; no copy from or into it is in flight:
        // the encoder hands a batch back only after the wait on its copy out has returned (or,
        // after an error, after every stream has settled).
        if let Err(e) = unsafe { cudarc::driver::result::free_host(self.ptr.cast()) } {
            tracing::warn!(error = %e, "freeing page-locked pixel memory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Driver::launch` indexes its kernels by `Kernel as usize`, in `Kernel::ALL` order.
    #[test]
    fn kernel_list_is_in_declaration_order() {
        for (i, kernel) in Kernel::ALL.into_iter().enumerate() {
            assert_eq!(kernel as usize, i, "{kernel:?}");
        }
    }

    /// NVRTC compiles without a GPU: every kernel the encoder loads must come out of it, for
    /// the oldest architecture bf16 needs (8.0) and for Hopper (9.0).
    #[test]
    fn kernels_compile_with_nvrtc() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(
                std::env::var_os("AESTHETE_REQUIRE_NVRTC").is_none(),
                "AESTHETE_REQUIRE_NVRTC is set but libnvrtc.so.13 does not load (LD_LIBRARY_PATH?)"
            );
            eprintln!(
                "skipped: libnvrtc.so.13 not found (pip install nvidia-cuda-nvrtc, LD_LIBRARY_PATH on its lib)"
            );
            return;
        }
        for arch in ["compute_80", "compute_90"] {
            let ptx = compile_kernels(arch).unwrap().to_src();
            for kernel in Kernel::ALL {
                for operand in [Operand::F32, Operand::Bf16, Operand::F16] {
                    let name = kernel.name(operand);
                    assert!(ptx.contains(&format!(".entry {name}(")), "{arch}: no kernel {name}");
                }
            }
        }
    }
}
