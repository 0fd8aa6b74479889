/* bench/jpeg_costs.py's probe of libjpeg-turbo: decode one rectangle of a JPEG into the whole
 * image's array, through jpeg_crop_scanline (columns) and jpeg_skip_scanlines (rows above); rows
 * below the rectangle are never decoded. Not part of the package: it measures what decoding part of
 * a frame would save (docs/flow.md, "Codecs"). Loaded through ctypes; compiled by the bench:
 *     gcc -O2 -shared -fPIC jpeg_region.c -ljpeg -o jpeg_region.so
 *
 * `pad` widens the rectangle on every side before decoding: libjpeg-turbo widens the columns to
 * whole iMCUs, and its fancy chroma upsampling at the edge of what it decodes differs from the whole
 * image's; 16 pixels (two 4:2:0 MCUs) make the rectangle's pixels those of the whole decode (the
 * bench checks every one). Corrupt data libjpeg only warns about is an error here.
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

struct error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

static void on_error(j_common_ptr cinfo) {
    struct error_mgr *err = (struct error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0)
        on_error(cinfo);
}

static int clamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* 0, or -1 with `message` (JMSG_LENGTH_MAX bytes) set. `out`: C-contiguous uint8 [h, w, channels]. */
int decode_region(const unsigned char *data, unsigned long size, unsigned char *out, int h, int w,
                  int channels, int top, int left, int height, int width, int pad, char *message) {
    struct jpeg_decompress_struct cinfo;
    struct error_mgr err;
    JSAMPROW rows[16];
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) {
        snprintf(message, JMSG_LENGTH_MAX, "%s", err.message);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    if ((int)cinfo.image_width != w || (int)cinfo.image_height != h) {
        snprintf(message, JMSG_LENGTH_MAX, "JPEG is %ux%u, expected %dx%d", cinfo.image_width,
                 cinfo.image_height, w, h);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_EXT_BGR;
    jpeg_start_decompress(&cinfo);
    int x0 = clamp(left - pad, 0, w), x1 = clamp(left + width + pad, 0, w);
    int y0 = clamp(top - pad, 0, h), y1 = clamp(top + height + pad, 0, h);
    JDIMENSION xoffset = (JDIMENSION)x0, cols = (JDIMENSION)(x1 - x0);
    if (x0 > 0 || x1 < w)
        jpeg_crop_scanline(&cinfo, &xoffset, &cols);
    if (y0 > 0)
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
    size_t stride = (size_t)w * channels;
    unsigned char *origin = out + (size_t)xoffset * channels;
    while ((int)cinfo.output_scanline < y1) {
        int n = y1 - (int)cinfo.output_scanline;
        if (n > 16)
            n = 16;
        for (int i = 0; i < n; i++)
            rows[i] = origin + (size_t)(cinfo.output_scanline + i) * stride;
        if (jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n) == 0)
            break;
    }
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return 0;
}

/* libjpeg-turbo's own entropy decoding and nothing else: jpeg_read_coefficients, each component's
 * quantised coefficients (natural order) copied into `out` as int16 [block rows, block columns, 64],
 * components one after another, `capacity` blocks at most. -> the blocks written, or -1 with
 * `message` set. What a compiled reader of a hybrid decode would cost the CPU. */
long read_coefficients(const unsigned char *data, unsigned long size, short *out, long capacity, char *message) {
    struct jpeg_decompress_struct cinfo;
    struct error_mgr err;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) {
        snprintf(message, JMSG_LENGTH_MAX, "%s", err.message);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, size);
    jpeg_read_header(&cinfo, TRUE);
    jvirt_barray_ptr *arrays = jpeg_read_coefficients(&cinfo);
    long k = 0;
    for (int c = 0; c < cinfo.num_components; c++) {
        jpeg_component_info *comp = cinfo.comp_info + c;
        for (JDIMENSION row = 0; row < comp->height_in_blocks; row++) {
            JBLOCKARRAY blocks = (*cinfo.mem->access_virt_barray)((j_common_ptr)&cinfo, arrays[c], row, 1, FALSE);
            if (k + (long)comp->width_in_blocks > capacity) {
                snprintf(message, JMSG_LENGTH_MAX, "more than %ld blocks", capacity);
                jpeg_destroy_decompress(&cinfo);
                return -1;
            }
            memcpy(out + k * DCTSIZE2, blocks[0], comp->width_in_blocks * sizeof(JBLOCK));
            k += comp->width_in_blocks;
        }
    }
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return k;
}
