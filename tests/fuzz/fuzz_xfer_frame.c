/* libFuzzer target: ZeroMQ artifact messages as the server and the client see
 * them (lb_xfer_hdr_decode + lb_xfer_payload_check). Input layout: the
 * 128-byte header frame, then payload frames, each a 2-byte little-endian
 * length and that many bytes (the last one may be short). A header that
 * decodes must re-encode to the same 128 bytes. Corpus:
 * tests/fuzz/corpus/xfer_frame/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "lb_xfer.h"

#define MAX_FRAMES 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lb_xfer_hdr h;
    lb_err err;
    size_t hn = size < LB_XFER_HDR_SIZE ? size : LB_XFER_HDR_SIZE;
    if (lb_xfer_hdr_decode(data, hn, &h, &err) != 0) {
        if (!err.msg[0] || strchr(err.msg, '\n'))
            abort();
        return 0;
    }
    uint8_t again[LB_XFER_HDR_SIZE];
    lb_xfer_hdr_encode(&h, again);
    if (memcmp(again, data, 64) != 0 || (h.id[0] && memcmp(again + 64, data + 64, 64) != 0))
        abort();
    lb_xfer_span fr[MAX_FRAMES];
    size_t n = 0, off = LB_XFER_HDR_SIZE;
    while (off < size && n < MAX_FRAMES) {
        size_t len = data[off];
        if (off + 1 < size)
            len |= (size_t)data[off + 1] << 8;
        off += 2;
        if (off > size)
            off = size;
        if (len > size - off)
            len = size - off;
        fr[n++] = (lb_xfer_span){data + off, len};
        off += len;
    }
    if (lb_xfer_payload_check(&h, fr, n, &err) == 0) {
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += fr[i].len;
        if (total != h.size || n != h.nframes)
            abort();
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort();
    }
    return 0;
}
