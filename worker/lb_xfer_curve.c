/* lb_xfer_curve: CURVE keys for the data plane (key files, keygen, the ZAP
 * allowlist) and the loopback rule of the bind policy (see lb_xfer.h). The
 * cryptography is libzmq's own; nothing here ever prints a key's secret. */
#include "lb_xfer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "lb_xfer_priv.h"

int lb_xfer_curve_check(lb_err *err)
{
    if (zmq_has("curve"))
        return 0;
    int major = 0, minor = 0, patch = 0;
    zmq_version(&major, &minor, &patch);
    return lb_err_set(err, LB_EINVAL,
                      "this libzmq %d.%d.%d has no CURVE (zmq_has(\"curve\") is false); "
                      "install a libzmq built with libsodium (Debian: libzmq5) or run on "
                      "loopback without keys",
                      major, minor, patch);
}

static bool name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > LB_XFER_KEYNAME_MAX || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* Z85 alphabet check (ZeroMQ RFC 32). */
static bool z85_ok(const char *s, size_t n)
{
    static const char alpha[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                ".-:+=^!/*?&<>()[]{}@%$#";
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(alpha, s[i]))
            return false;
    return true;
}

/* Creates path (O_EXCL) with mode and writes key + newline. */
static int write_key(const char *path, const char *key, mode_t mode, lb_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return lb_err_set(err, errno == EEXIST ? LB_ESTATE : LB_EIO,
                          "%s: cannot create (%s); keys are never overwritten: remove the old "
                          "pair first or pick another --name",
                          path, strerror(errno));
    char buf[LB_XFER_KEY_LEN + 1];
    memcpy(buf, key, LB_XFER_KEY_LEN);
    buf[LB_XFER_KEY_LEN] = '\n';
    int rc = 0;
    if (fchmod(fd, mode) != 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf ||
        fsync(fd) != 0)
        rc = lb_err_set(err, LB_EIO, "%s: write failed (%s)", path, strerror(errno));
    memset(buf, 0, sizeof buf);
    if (close(fd) != 0 && !rc)
        rc = lb_err_set(err, LB_EIO, "%s: close failed (%s)", path, strerror(errno));
    if (rc)
        unlink(path);
    return rc;
}

int lb_xfer_keygen(const char *dir, const char *name, lb_err *err)
{
    int rc = lb_xfer_curve_check(err);
    if (rc)
        return rc;
    if (!name_ok(name))
        return lb_err_set(err, LB_EINVAL, "key name '%.80s' must match [A-Za-z0-9._-]{1,%d}",
                          name ? name : "", LB_XFER_KEYNAME_MAX);
    char pub[LB_XFER_KEY_LEN + 1], sec[LB_XFER_KEY_LEN + 1];
    char *ppath = NULL, *spath = NULL;
    struct stat st;
    if (stat(dir, &st) != 0 && mkdir(dir, 0700) != 0)
        return lb_err_set(err, LB_EIO, "%s: cannot create the key directory (%s)", dir,
                          strerror(errno));
    if (asprintf(&ppath, "%s/%s.pub", dir, name) < 0 ||
        asprintf(&spath, "%s/%s.key", dir, name) < 0) {
        rc = lb_err_set(err, LB_ENOMEM, "keygen: out of memory");
        goto done;
    }
    /* both checked first: a half-overwritten pair would not match */
    if (access(ppath, F_OK) == 0 || access(spath, F_OK) == 0) {
        rc = lb_err_set(err, LB_ESTATE,
                        "%s/%s.{pub,key}: a key pair named '%s' exists; keys are never "
                        "overwritten: remove it first or pick another --name",
                        dir, name, name);
        goto done;
    }
    if (zmq_curve_keypair(pub, sec) != 0) {
        rc = lb_err_set(err, LB_EINVAL, "zmq_curve_keypair failed (%s)",
                        zmq_strerror(zmq_errno()));
        goto done;
    }
    if ((rc = write_key(spath, sec, 0600, err)))
        goto done;
    if ((rc = write_key(ppath, pub, 0644, err)))
        unlink(spath);
done:
    memset(sec, 0, sizeof sec);
    free(ppath);
    free(spath);
    return rc;
}

int lb_xfer_key_read(const char *path, bool secret, char out[LB_XFER_KEY_LEN + 1], lb_err *err)
{
    out[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lb_err_set(err, LB_EIO, "%s: cannot open CURVE key (%s); make keys with `lowbit "
                                       "keygen`",
                          path, strerror(errno));
    struct stat st;
    char buf[LB_XFER_KEY_LEN + 4];
    ssize_t n = -1;
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = lb_err_set(err, LB_EIO, "%s: not a regular file", path);
        goto done;
    }
    if (secret && (st.st_mode & 077)) {
        rc = lb_err_set(err, LB_EINVAL,
                        "%s: secret key is readable by others (mode %03o); chmod 600 it",
                        path, (unsigned)(st.st_mode & 0777));
        goto done;
    }
    n = read(fd, buf, sizeof buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n != LB_XFER_KEY_LEN || !z85_ok(buf, LB_XFER_KEY_LEN)) {
        rc = lb_err_set(err, LB_EFORMAT,
                        "%s: not a Z85 CURVE key (want 40 characters as written by `lowbit "
                        "keygen`)",
                        path);
        goto done;
    }
    memcpy(out, buf, LB_XFER_KEY_LEN);
    out[LB_XFER_KEY_LEN] = 0;
done:
    memset(buf, 0, sizeof buf);
    close(fd);
    return rc;
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(((const lb_xfer_peer_key *)a)->name, ((const lb_xfer_peer_key *)b)->name);
}

/* Every NAME.pub in dir, sorted by name. */
static int load_allowlist(const char *dir, lb_xfer_curve *c, lb_err *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return lb_err_set(err, LB_EIO,
                          "%s: cannot open the client key directory (%s); put each worker's "
                          "NAME.pub there",
                          dir, strerror(errno));
    int rc = 0;
    size_t cap = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".pub"))
            continue;
        char name[LB_XFER_KEYNAME_MAX + 8];
        snprintf(name, sizeof name, "%.*s", (int)(len - 4 < sizeof name - 1 ? len - 4 : 0),
                 e->d_name);
        if (!name_ok(name)) {
            rc = lb_err_set(err, LB_EINVAL, "%s/%.80s: key name must match [A-Za-z0-9._-]{1,%d}",
                            dir, e->d_name, LB_XFER_KEYNAME_MAX);
            break;
        }
        if (c->nclients == cap) {
            size_t nc = cap ? cap * 2 : 8;
            lb_xfer_peer_key *k = realloc(c->clients, nc * sizeof *k);
            if (!k) {
                rc = lb_err_set(err, LB_ENOMEM, "out of memory reading %s", dir);
                break;
            }
            c->clients = k;
            cap = nc;
        }
        lb_xfer_peer_key *k = &c->clients[c->nclients];
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) {
            rc = lb_err_set(err, LB_EINVAL, "%s: path too long", dir);
            break;
        }
        memcpy(k->name, name, strlen(name) + 1); /* name_ok: at most 64 bytes */
        if (!(rc = lb_xfer_key_read(path, false, k->pub, err)))
            c->nclients++;
    }
    closedir(d);
    if (!rc && c->nclients == 0)
        rc = lb_err_set(err, LB_EINVAL,
                        "%s: no client keys (NAME.pub); no worker could connect. Copy each "
                        "worker's NAME.pub from `lowbit keygen` there",
                        dir);
    if (!rc)
        qsort(c->clients, c->nclients, sizeof *c->clients, cmp_keys);
    return rc;
}

/* path = explicit, else dir/leaf. */
static int pick(const char *explicit, const char *dir, const char *leaf, char *out, size_t size,
                lb_err *err)
{
    if (explicit)
        snprintf(out, size, "%s", explicit);
    else if (dir)
        snprintf(out, size, "%s/%s", dir, leaf);
    else
        return lb_err_set(err, LB_EINVAL, "CURVE: no key directory and no %s file given", leaf);
    return 0;
}

int lb_xfer_curve_load_server(const char *dir, const char *server_key, const char *clients_dir,
                              lb_xfer_curve *c, lb_err *err)
{
    memset(c, 0, sizeof *c);
    char path[4096];
    int rc = lb_xfer_curve_check(err);
    if (rc || (rc = pick(server_key, dir, "server.key", path, sizeof path, err)) ||
        (rc = lb_xfer_key_read(path, true, c->server_sec, err)))
        goto fail;
    if (zmq_curve_public(c->server_pub, c->server_sec) != 0) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: not a CURVE secret key", path);
        goto fail;
    }
    if ((rc = pick(clients_dir, dir, "clients", path, sizeof path, err)) ||
        (rc = load_allowlist(path, c, err)))
        goto fail;
    c->on = true;
    return 0;
fail:
    lb_xfer_curve_clear(c);
    return rc;
}

int lb_xfer_curve_load_client(const char *dir, const char *server_pub, const char *client_key,
                              const char *name, lb_xfer_curve *c, lb_err *err)
{
    memset(c, 0, sizeof *c);
    char path[4096], leaf[LB_XFER_KEYNAME_MAX + 8];
    int rc = lb_xfer_curve_check(err);
    if (rc || (rc = pick(server_pub, dir, "server.pub", path, sizeof path, err)) ||
        (rc = lb_xfer_key_read(path, false, c->server_pub, err)))
        goto fail;
    if (!name)
        name = "worker";
    if (!client_key && !name_ok(name)) {
        rc = lb_err_set(err, LB_EINVAL, "key name '%.80s' must match [A-Za-z0-9._-]{1,%d}", name,
                        LB_XFER_KEYNAME_MAX);
        goto fail;
    }
    snprintf(leaf, sizeof leaf, "%s.key", name);
    if ((rc = pick(client_key, dir, leaf, path, sizeof path, err)) ||
        (rc = lb_xfer_key_read(path, true, c->client_sec, err)))
        goto fail;
    /* the name is the file stem: what the server's allowlist calls this key */
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    size_t bl = strlen(base);
    if (bl > 4 && !strcmp(base + bl - 4, ".key"))
        bl -= 4;
    snprintf(c->client_name, sizeof c->client_name, "%.*s",
             (int)(bl <= LB_XFER_KEYNAME_MAX ? bl : LB_XFER_KEYNAME_MAX), base);
    if (!name_ok(c->client_name)) {
        rc = lb_err_set(err, LB_EINVAL, "%s: key file name must be NAME.key, NAME matching "
                                        "[A-Za-z0-9._-]{1,%d}",
                        path, LB_XFER_KEYNAME_MAX);
        goto fail;
    }
    if (zmq_curve_public(c->client_pub, c->client_sec) != 0) {
        rc = lb_err_set(err, LB_EFORMAT, "%s: not a CURVE secret key", path);
        goto fail;
    }
    c->on = true;
    return 0;
fail:
    lb_xfer_curve_clear(c);
    return rc;
}

void lb_xfer_curve_clear(lb_xfer_curve *c)
{
    if (!c)
        return;
    free(c->clients);
    /* volatile: the wipe of secrets must not be optimized away */
    volatile char *p = (volatile char *)c;
    for (size_t i = 0; i < sizeof *c; i++)
        p[i] = 0;
}

bool lb_xfer_endpoint_loopback(const char *ep)
{
    if (!ep)
        return true; /* the default bind, tcp://127.0.0.1:* */
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
        return true;
    if (strncmp(ep, "tcp://", 6))
        return false;
    const char *h = ep + 6;
    if (!strncmp(h, "[::1]:", 6) || !strncmp(h, "localhost:", 10))
        return true;
    if (strncmp(h, "127.", 4))
        return false;
    /* 127.a.b.c: digits and dots up to the port */
    for (h += 4; *h && *h != ':'; h++)
        if (!((*h >= '0' && *h <= '9') || *h == '.'))
            return false;
    return *h == ':';
}

/* ZAP (ZeroMQ RFC 27): one request from sock, one reply. Admits a CURVE
 * client whose public key is in the allowlist; its user id is the key name.
 * OUT: denied (the refused key, Z85, public) when refused. Returns 0 (handled)
 * or -1 (socket error, e.g. ETERM). */
int lb_xfer_zap_serve(void *sock, const lb_xfer_curve *c, char *denied, size_t dsize)
{
    lb_xfer_frames f;
    if (lb_xfer_frames_recv(sock, 16, &f) != 0)
        return -1;
    denied[0] = 0;
    const char *status = "400", *text = "malformed ZAP request";
    const char *user = "";
    char reqid[256] = "";
    size_t reqid_len = 0;
    if (f.n >= 7 && !f.overflow) {
        reqid_len = zmq_msg_size(&f.m[1]) < sizeof reqid ? zmq_msg_size(&f.m[1]) : 0;
        memcpy(reqid, zmq_msg_data(&f.m[1]), reqid_len);
        bool curve = zmq_msg_size(&f.m[5]) == 5 && !memcmp(zmq_msg_data(&f.m[5]), "CURVE", 5);
        char z85[LB_XFER_KEY_LEN + 1] = "";
        if (curve && zmq_msg_size(&f.m[6]) == 32)
            zmq_z85_encode(z85, zmq_msg_data(&f.m[6]), 32);
        text = "client key not in the allowlist";
        for (size_t i = 0; z85[0] && i < c->nclients; i++)
            if (!strcmp(c->clients[i].pub, z85)) {
                status = "200";
                text = "OK";
                user = c->clients[i].name;
                break;
            }
        if (strcmp(status, "200"))
            snprintf(denied, dsize, "%s", z85[0] ? z85 : "(not a CURVE key)");
    }
    /* version, request id, status code, status text, user id, metadata */
    int rc = 0;
    if (zmq_send(sock, "1.0", 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, reqid, reqid_len, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, status, 3, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, user, strlen(user), ZMQ_SNDMORE) < 0 || zmq_send(sock, "", 0, 0) < 0)
        rc = -1;
    lb_xfer_frames_close(&f);
    return rc;
}
