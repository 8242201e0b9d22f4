//! libjpeg-turbo's decompressor (as vendored by `mozjpeg-sys`) behind one safe type: all of
//! the JPEG decoder's `unsafe` is in this file.
//!
//! libjpeg reports a fatal error by calling `error_exit`, which must not return. Ours unwinds
//! (`C-unwind`, with the library built for unwinding) carrying an [`Abort`]; every call into
//! libjpeg runs inside [`Decompressor::call`], which catches that unwind and turns it into an
//! `Err`. After an error only dropping the decompressor is allowed (libjpeg's rule: after
//! `error_exit`, `jpeg_destroy` or `jpeg_abort`), and [`Drop`] destroys it.
//!
//! The order of libjpeg's calls is a state machine (header, then either scanlines or
//! coefficients, then finish); each method asserts the state it needs, so misuse is a panic,
//! never undefined behaviour.

use std::ffi::{CStr, c_int, c_long, c_ulong};
use std::marker::PhantomData;
use std::mem;
use std::panic::{self, AssertUnwindSafe};

use mozjpeg_sys::*;

use super::idct::Block;

/// A libjpeg error: its message code and text.
#[derive(Debug)]
pub(super) struct Abort {
    pub code: c_int,
    pub message: String,
}

/// Where the decompressor is in libjpeg's call order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Created,
    Header,
    /// `jpeg_start_decompress` done: scanlines can be read.
    Scanlines,
    /// `jpeg_read_coefficients` done: block rows can be read.
    Coefficients,
    Finished,
    /// A libjpeg call failed: only dropping is allowed.
    Failed,
}

/// The struct libjpeg works on and the error manager it points to, boxed together so that
/// `cinfo.common.err` stays valid wherever the [`Decompressor`] moves.
struct Inner {
    cinfo: jpeg_decompress_struct,
    err: jpeg_error_mgr,
}

/// A libjpeg decompressor reading from `'src` bytes.
pub(super) struct Decompressor<'src> {
    inner: Box<Inner>,
    state: State,
    /// The coefficient arrays of [`Decompressor::read_coefficients`], one per component.
    coefficients: *mut *mut jvirt_barray_control,
    /// `jpeg_mem_src` keeps a pointer to the bytes.
    _src: PhantomData<&'src [u8]>,
}

impl<'src> Decompressor<'src> {
    /// A decompressor reading `bytes`, whose own allocations (progressive coefficient buffers
    /// and the like) are bounded by `max_memory` bytes (more fails with
    /// `JERR_NO_BACKING_STORE`).
    pub fn new(bytes: &'src [u8], max_memory: u64) -> Result<Self, Abort> {
        // SAFETY: all-zero is the documented state of both structs before `jpeg_std_error`
        // and `jpeg_create_decompress` (a never-created struct has a null `mem`, which
        // `jpeg_destroy_decompress` skips, so dropping early is fine).
        let mut inner: Box<Inner> = Box::new(unsafe { mem::zeroed() });
        let inner_ref = &mut *inner;
        // SAFETY: `err` lives in the same box as `cinfo` for as long as `cinfo` is used.
        unsafe { jpeg_std_error(&mut inner_ref.err) };
        inner_ref.err.error_exit = Some(error_exit);
        inner_ref.err.emit_message = Some(emit_message);
        inner_ref.cinfo.common.err = &mut inner_ref.err;
        let mut this = Decompressor {
            inner,
            state: State::Created,
            coefficients: std::ptr::null_mut(),
            _src: PhantomData,
        };
        let len = bytes.len() as c_ulong;
        let limit = max_memory.min(c_long::MAX as u64) as c_long;
        this.call(State::Created, |cinfo| {
            // SAFETY: the struct was prepared above; `bytes` outlives `self` ('src).
            unsafe {
                jpeg_create_decompress(cinfo);
                jpeg_mem_src(cinfo, bytes.as_ptr(), len);
                (*cinfo.common.mem).max_memory_to_use = limit;
            }
        })?;
        Ok(this)
    }

    /// Runs `f` on the struct if the decompressor is in `state`, catching libjpeg's errors.
    fn call<T>(
        &mut self,
        state: State,
        f: impl FnOnce(&mut jpeg_decompress_struct) -> T,
    ) -> Result<T, Abort> {
        assert_eq!(self.state, state, "libjpeg call out of order");
        let cinfo = &mut self.inner.cinfo;
        match panic::catch_unwind(AssertUnwindSafe(|| f(cinfo))) {
            Ok(value) => Ok(value),
            Err(payload) => {
                self.state = State::Failed;
                match payload.downcast::<Abort>() {
                    Ok(abort) => Err(*abort),
                    Err(other) => panic::resume_unwind(other),
                }
            }
        }
    }

    /// Reads the header: sizes, components, sampling factors.
    pub fn read_header(&mut self) -> Result<(), Abort> {
        // SAFETY: a created decompressor with a source; `require_image` = TRUE.
        self.call(State::Created, |cinfo| unsafe { jpeg_read_header(cinfo, 1) })?;
        self.state = State::Header;
        Ok(())
    }

    /// The decompressor's fields (sizes, colour spaces, sampling factors): read-only.
    pub fn info(&self) -> &jpeg_decompress_struct {
        assert!(self.state >= State::Header, "no header read");
        &self.inner.cinfo
    }

    /// The header's components (`num_components` of them).
    pub fn components(&self) -> &[jpeg_component_info] {
        let cinfo = self.info();
        let n = usize::try_from(cinfo.num_components).expect("libjpeg's component count");
        assert!(!cinfo.comp_info.is_null());
        // SAFETY: after the header, `comp_info` points to `num_components` entries allocated
        // in libjpeg's image pool, which lives until the struct is destroyed.
        unsafe { std::slice::from_raw_parts(cinfo.comp_info, n) }
    }

    /// Sets the colour space and the DCT scaling `scale_num`/8 of the scanline output.
    pub fn set_output(&mut self, color_space: J_COLOR_SPACE, scale_num: u32) {
        assert_eq!(self.state, State::Header, "output set after decompression started");
        assert!((1..=16).contains(&scale_num));
        let cinfo = &mut self.inner.cinfo;
        cinfo.out_color_space = color_space;
        cinfo.scale_num = scale_num;
        cinfo.scale_denom = 8;
    }

    /// Starts scanline decompression; returns the output width and height.
    pub fn start(&mut self) -> Result<(u32, u32), Abort> {
        // SAFETY: the header was read (state checked by `call`).
        self.call(State::Header, |cinfo| unsafe { jpeg_start_decompress(cinfo) })?;
        self.state = State::Scanlines;
        let cinfo = &self.inner.cinfo;
        Ok((cinfo.output_width, cinfo.output_height))
    }

    /// Decodes only columns `x .. x + width` of the coming scanlines (libjpeg widens the span
    /// to whole iMCUs); returns the span it chose as (start, width).
    pub fn crop_scanline(&mut self, x: usize, width: usize) -> Result<(usize, usize), Abort> {
        let (mut x, mut width) = (x as JDIMENSION, width as JDIMENSION);
        let out_width = self.inner.cinfo.output_width;
        assert!(x.checked_add(width).is_some_and(|end| end <= out_width), "crop outside the image");
        // SAFETY: between start and the first scanline; libjpeg validates the span again.
        self.call(State::Scanlines, |cinfo| unsafe {
            jpeg_crop_scanline(cinfo, &mut x, &mut width)
        })?;
        Ok((x as usize, width as usize))
    }

    /// Skips `n` scanlines (entropy decoding only); returns how many were skipped.
    pub fn skip_scanlines(&mut self, n: usize) -> Result<usize, Abort> {
        let n = JDIMENSION::try_from(n).expect("row count fits libjpeg's JDIMENSION");
        // SAFETY: between start and finish.
        let skipped =
            self.call(State::Scanlines, |cinfo| unsafe { jpeg_skip_scanlines(cinfo, n) })?;
        Ok(skipped as usize)
    }

    /// Decodes the next scanline into `row` (the cropped output width times the output
    /// components); false when no line was produced.
    pub fn read_scanline(&mut self, row: &mut [u8]) -> Result<bool, Abort> {
        let cinfo = &self.inner.cinfo;
        let needed = cinfo.output_width as usize * cinfo.out_color_components as usize;
        assert!(row.len() >= needed, "scanline buffer of {} for {needed} bytes", row.len());
        let mut ptr = row.as_mut_ptr();
        // SAFETY: between start and finish; `row` holds a whole output line (asserted).
        let lines = self
            .call(State::Scanlines, |cinfo| unsafe { jpeg_read_scanlines(cinfo, &mut ptr, 1) })?;
        Ok(lines == 1)
    }

    /// Entropy-decodes the whole file into DCT coefficients (instead of scanlines).
    pub fn read_coefficients(&mut self) -> Result<(), Abort> {
        // SAFETY: the header was read and decompression not started (state checked).
        let arrays = self.call(State::Header, |cinfo| unsafe { jpeg_read_coefficients(cinfo) })?;
        if arrays.is_null() {
            self.state = State::Failed;
            return Err(Abort { code: 0, message: "no coefficients".into() });
        }
        self.coefficients = arrays;
        self.state = State::Coefficients;
        Ok(())
    }

    /// Block row `row` of component `component`'s coefficients: `width_in_blocks` blocks.
    pub fn block_row(&mut self, component: usize, row: usize) -> Result<&[Block], Abort> {
        let info = self.components().get(component).expect("component index in range");
        let (width, height) = (info.width_in_blocks as usize, info.height_in_blocks as usize);
        assert!(row < height, "block row {row} of {height}");
        let arrays = self.coefficients;
        let rows = self.call(State::Coefficients, |cinfo| {
            let access = unsafe { (*cinfo.common.mem).access_virt_barray }
                .expect("libjpeg's memory manager has access_virt_barray");
            // SAFETY: `arrays` has one entry per component (read_coefficients); the row is
            // inside the component's array (asserted above), which libjpeg made at least
            // `width_in_blocks` blocks wide. One row, read only.
            unsafe { access(&mut cinfo.common, *arrays.add(component), row as JDIMENSION, 1, 0) }
        })?;
        // SAFETY: libjpeg returned one row of at least `width` blocks; it stays valid until
        // the next access to the array, which needs `&mut self`.
        Ok(unsafe { std::slice::from_raw_parts((*rows).cast_const(), width) })
    }

    /// Component `component`'s quantization table, once coefficients were read.
    pub fn quant_table(&self, component: usize) -> Option<[u16; 64]> {
        assert_eq!(self.state, State::Coefficients);
        let table = self.components()[component].quant_table;
        // SAFETY: non-null tables are libjpeg's, alive with the struct.
        (!table.is_null()).then(|| unsafe { (*table).quantval })
    }

    /// Finishes decompression (after all scanlines, or after coefficients).
    pub fn finish(&mut self) -> Result<(), Abort> {
        let state = self.state;
        assert!(matches!(state, State::Scanlines | State::Coefficients), "finish in {state:?}");
        // SAFETY: decompression started (scanlines or coefficients).
        self.call(state, |cinfo| unsafe { jpeg_finish_decompress(cinfo) })?;
        self.state = State::Finished;
        Ok(())
    }
}

impl Drop for Decompressor<'_> {
    fn drop(&mut self) {
        // SAFETY: frees libjpeg's pools whether decoding finished or failed; libjpeg allows it
        // in every state, and skips a struct that was never created.
        unsafe { jpeg_destroy_decompress(&mut self.inner.cinfo) };
    }
}

/// The text of libjpeg's current message.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    /// `format_message` as libjpeg declares it: it writes into `buffer`. (mozjpeg-sys binds
    /// the buffer as `&[u8; 80]`, a shared reference that must not be written through.)
    type FormatMessage = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8);
    /// libjpeg's `JMSG_LENGTH_MAX`.
    const JMSG_LENGTH_MAX: usize = 80;
    let mut buffer = [0u8; JMSG_LENGTH_MAX];
    // SAFETY: `err` is the manager installed by `jpeg_std_error`.
    if let Some(format) = unsafe { (*cinfo.err).format_message } {
        // SAFETY: the same function with the buffer as a raw pointer (`&T` and `*mut U` have
        // the same ABI); it writes a NUL-terminated string of at most JMSG_LENGTH_MAX bytes.
        unsafe {
            let format: FormatMessage = mem::transmute(format);
            format(cinfo, buffer.as_mut_ptr());
        }
    }
    CStr::from_bytes_until_nul(&buffer)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // SAFETY: libjpeg passes the struct whose `err` we installed.
    let code = unsafe { (*cinfo.err).msg_code };
    let message = message(cinfo);
    // `resume_unwind` skips the panic hook: nothing is printed, `call` catches it.
    panic::resume_unwind(Box::new(Abort { code, message }))
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    // SAFETY: as in `error_exit`.
    let code = unsafe { (*cinfo.err).msg_code };
    // Running out of data is an error for Pillow (without LOAD_TRUNCATED_IMAGES) and for us;
    // other corrupt-data warnings are tolerated by both.
    if code == JWRN_JPEG_EOF as c_int {
        panic::resume_unwind(Box::new(Abort { code, message: String::new() }));
    }
    // SAFETY: as in `error_exit`.
    unsafe { (*cinfo.err).num_warnings += 1 };
    tracing::trace!(warning = %message(cinfo), "libjpeg warning");
}
