/*
 * JPEG decoding through libjpeg-turbo's libjpeg API, with Pillow's verdicts on broken files
 * (Pillow's src/libImaging/JpegDecode.c and ImageFile.load):
 *   - a warning (corrupt entropy data, junk between segments) is no error: decoding goes on;
 *   - an error is ("broken data stream");
 *   - data that runs out before the last scanline is refused as truncated ("image file is
 *     truncated"), data that runs out only while looking for the end marker is not.
 * TurboJPEG's API reports only a pass's first warning and cannot say where the data ran out,
 * hence this file. Errors leave through longjmp from libjpeg's callbacks back to this file,
 * never through Rust frames. Used by src/imaging/jpeg.rs.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

enum {
    TAGFIX_JPEG_OK = 0,
    TAGFIX_JPEG_ERROR = 1,
    TAGFIX_JPEG_TRUNCATED = 2,
};

/* The messages' buffer size, for the Rust side. */
const size_t tagfix_jpeg_message_len = JMSG_LENGTH_MAX;

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    /* In jpeg_finish_decompress: every scanline is out, running out of data is no truncation. */
    int finishing;
    char *message;
} verdicts;

typedef struct {
    struct jpeg_progress_mgr pub;
    int scan_limit;
} scan_guard;

static void on_error(j_common_ptr cinfo) {
    verdicts *v = (verdicts *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, v->message);
    longjmp(v->escape, TAGFIX_JPEG_ERROR);
}

/* Warnings (level < 0) are counted and otherwise ignored, as Pillow ignores them, except the data
 * running out before the last scanline; trace messages (level >= 0) are dropped. */
static void on_message(j_common_ptr cinfo, int level) {
    verdicts *v = (verdicts *)cinfo->err;
    if (level >= 0)
        return;
    if (cinfo->err->msg_code == JWRN_JPEG_EOF && !v->finishing) {
        (*cinfo->err->format_message)(cinfo, v->message);
        longjmp(v->escape, TAGFIX_JPEG_TRUNCATED);
    }
    cinfo->err->num_warnings++;
}

/* A crafted progressive file can hold thousands of tiny scans, each a pass over the image. */
static void check_scans(j_common_ptr cinfo) {
    scan_guard *g = (scan_guard *)cinfo->progress;
    verdicts *v = (verdicts *)cinfo->err;
    int scan = ((j_decompress_ptr)cinfo)->input_scan_number;
    if (scan > g->scan_limit) {
        snprintf(v->message, JMSG_LENGTH_MAX, "progressive JPEG with more than %d scans",
                 g->scan_limit);
        longjmp(v->escape, TAGFIX_JPEG_ERROR);
    }
}

/* Reads the header and, with `out`, decodes into it. `expected` is the size and four-component flag
 * the header gave before (NULL: this is that first reading, its results go to `found`). */
static int decompress(const unsigned char *data, size_t len, int scan_limit, unsigned found[3],
                      const unsigned expected[3], unsigned char *out, char *message) {
    struct jpeg_decompress_struct cinfo;
    verdicts v;
    scan_guard g;
    memset(&v, 0, sizeof(v));
    memset(&g, 0, sizeof(g));
    cinfo.err = jpeg_std_error(&v.pub);
    v.pub.error_exit = on_error;
    v.pub.emit_message = on_message;
    v.message = message;
    message[0] = '\0';
    g.pub.progress_monitor = check_scans;
    g.scan_limit = scan_limit;
    /* The verdict travels as setjmp's value (locals changed after setjmp are not to be read after
     * the jump), in one of the contexts C allows setjmp in. */
    switch (setjmp(v.escape)) {
    case 0:
        break;
    case TAGFIX_JPEG_TRUNCATED:
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_TRUNCATED;
    default:
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_ERROR;
    }
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &g.pub;
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    found[0] = cinfo.image_width;
    found[1] = cinfo.image_height;
    found[2] = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    if (out == NULL) {
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_OK;
    }
    unsigned components = expected[2] ? 4 : 3;
    cinfo.out_color_space = expected[2] ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_width != expected[0] || cinfo.output_height != expected[1] ||
        (unsigned)cinfo.output_components != components) {
        snprintf(message, JMSG_LENGTH_MAX, "the header reads %ux%u×%d, not %ux%u×%u",
                 cinfo.output_width, cinfo.output_height, cinfo.output_components, expected[0],
                 expected[1], components);
        jpeg_destroy_decompress(&cinfo);
        return TAGFIX_JPEG_ERROR;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + (size_t)cinfo.output_scanline * expected[0] * components;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            /* Only a suspending data source returns none; the memory source never suspends. */
            snprintf(message, JMSG_LENGTH_MAX, "no scanline at row %u", cinfo.output_scanline);
            jpeg_destroy_decompress(&cinfo);
            return TAGFIX_JPEG_ERROR;
        }
    }
    v.finishing = 1;
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return TAGFIX_JPEG_OK;
}

/* Reads the header: the frame's size and whether it has four components (CMYK or YCCK). */
int tagfix_jpeg_header(const unsigned char *data, size_t len, int scan_limit,
                       unsigned *width, unsigned *height, int *cmyk, char *message) {
    unsigned found[3] = {0, 0, 0};
    int rc = decompress(data, len, scan_limit, found, NULL, NULL, message);
    *width = found[0];
    *height = found[1];
    *cmyk = (int)found[2];
    return rc;
}

/* Decodes to `out`: width × height pixels of 4 bytes (CMYK as stored) when `cmyk`, else 3 (RGB,
 * gray replicated). The header read again must give that size. */
int tagfix_jpeg_decode(const unsigned char *data, size_t len, int scan_limit, unsigned width,
                       unsigned height, int cmyk, unsigned char *out, char *message) {
    unsigned found[3];
    const unsigned expected[3] = {width, height, cmyk != 0};
    return decompress(data, len, scan_limit, found, expected, out, message);
}
