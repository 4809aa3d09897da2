/* lowbit keygen: CURVE key pairs for the artifact data plane (lb_xfer.h,
 * docs/data-plane.md). Prints file names, never a key. */
#include <stdio.h>
#include <string.h>

#include "lb_cli.h"
#include "lb_xfer.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: lowbit keygen --out DIR [--name NAME]\n"
            "\n"
            "Writes DIR/NAME.pub (public, mode 0644) and DIR/NAME.key (secret, mode 0600),\n"
            "Z85 text made by libzmq's zmq_curve_keypair; an existing pair is never\n"
            "overwritten. NAME (default \"server\") is [A-Za-z0-9._-]{1,64}.\n"
            "  coordinator: server.key, and clients/NAME.pub for each worker allowed in\n"
            "  worker NAME: server.pub and NAME.key (its worker id becomes NAME@...)\n"
            "See docs/data-plane.md (CURVE).\n");
}

int lb_cmd_keygen(int argc, char **argv)
{
    const char *dir = NULL, *name = "server";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
            name = argv[++i];
        } else {
            fprintf(stderr, "lowbit keygen: unknown or incomplete option '%s'; run `lowbit "
                            "keygen --help`\n",
                    argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "lowbit keygen: --out DIR is required\n");
        return 2;
    }
    lb_err err = {0};
    if (lb_xfer_keygen(dir, name, &err)) {
        fprintf(stderr, "lowbit keygen: %s\n", err.msg);
        return 1;
    }
    printf("wrote %s/%s.pub and %s/%s.key (secret, mode 0600)\n", dir, name, dir, name);
    return 0;
}
