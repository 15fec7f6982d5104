/*
 * collectord load generator: StatsD lines over UDP (sendmmsg bursts) or TCP (many
 * connections), at a target rate or flat out, for a bounded time. Prints what it sent as
 * JSON so the harness can compare it with what the daemon counted.
 *
 *   loadgen --proto udp|tcp --port N [--rate LINES_PER_S] [--seconds S] [--lines-per-packet N]
 *           [--series N] [--shape counter|timer|gauge|dogstatsd|tagged] [--connections N] [--total N]
 *           [--sequential 1]   (series ids in turn rather than random: every series once per pass)
 *
 * Built by benchmarks/ingest.py with the machine's cc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BURST 64
#define MAX_PACKET 65000

static const char *proto = "udp", *shape = "counter";
static int port = 8125, lines_per_packet = 25, series = 1000, connections = 1;
static double rate = 0, seconds = 10;
static long long total_limit = 0;
static int sequential = 0; /* series ids in order (each series once per pass), not random */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t next_rand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* One line of the chosen shape into buf; returns its length (newline included). */
static int make_line(char *buf, int id, int value) {
    if (strcmp(shape, "timer") == 0)
        return sprintf(buf, "bench.timer.%d:%d|ms\n", id, value);
    if (strcmp(shape, "gauge") == 0)
        return sprintf(buf, "bench.gauge.%d:%d|g\n", id, value);
    if (strcmp(shape, "dogstatsd") == 0)
        return sprintf(buf, "bench.dog.%d:%d|ms|#env:prod,region:eu-west-1,service:api\n", id, value);
    if (strcmp(shape, "tagged") == 0) /* 100 hosts under each name: series that share names */
        return sprintf(buf, "bench.tagged.%d:1|c|#host:h%d\n", id / 100, id % 100);
    return sprintf(buf, "bench.counter.%d:1|c\n", id);
}

/* Build a packet of lines_per_packet lines; returns its length (no trailing newline). */
static int make_packet(char *buf, uint64_t *state, uint64_t *seq) {
    int len = 0;
    for (int i = 0; i < lines_per_packet; i++) {
        rng_state = *state;
        uint64_t r = next_rand();
        *state = rng_state;
        int id = sequential ? (int)((*seq)++ % (uint64_t)series) : (int)(r % (uint64_t)series);
        len += make_line(buf + len, id, (int)((r >> 20) % 1000));
    }
    return len - 1;
}

struct worker {
    int index;
    long long lines_sent;
    long long packets_sent;
    long long send_errors;
    double target_rate;
    long long quota;
};

static double deadline;

static void *run_worker(void *arg) {
    struct worker *w = arg;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    int udp = strcmp(proto, "udp") == 0;
    int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("connect");
        w->send_errors++;
        return NULL;
    }
    int sndbuf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    char (*packets)[MAX_PACKET] = malloc(sizeof(char[BURST][MAX_PACKET]));
    struct mmsghdr msgs[BURST];
    struct iovec iov[BURST];
    uint64_t state = 88172645463325252ULL + (uint64_t)w->index * 7919;
    uint64_t seq = (uint64_t)w->index * (uint64_t)(series / connections);
    double start = now();
    while (now() < deadline) {
        if (w->quota > 0 && w->lines_sent >= w->quota) break;
        int burst = BURST;
        if (w->target_rate > 0) {
            double due = w->lines_sent / w->target_rate + start;
            double wait = due - now();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
            long long allowed = (long long)((now() - start) * w->target_rate) - w->lines_sent;
            long long packets_allowed = allowed / lines_per_packet + 1;
            if (packets_allowed < burst) burst = (int)packets_allowed;
        }
        if (w->quota > 0) {
            long long left = (w->quota - w->lines_sent + lines_per_packet - 1) / lines_per_packet;
            if (left < burst) burst = (int)left;
        }
        for (int i = 0; i < burst; i++) {
            int len = make_packet(packets[i], &state, &seq);
            if (!udp) packets[i][len++] = '\n';
            iov[i].iov_base = packets[i];
            iov[i].iov_len = (size_t)len;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        if (udp) {
            int sent = sendmmsg(fd, msgs, (unsigned)burst, 0);
            if (sent < 0) {
                w->send_errors++;
                continue;
            }
            w->packets_sent += sent;
            w->lines_sent += (long long)sent * lines_per_packet;
        } else {
            for (int i = 0; i < burst; i++) {
                size_t off = 0;
                while (off < iov[i].iov_len) {
                    ssize_t n = send(fd, (char *)iov[i].iov_base + off, iov[i].iov_len - off, 0);
                    if (n < 0) {
                        if (errno == EINTR) continue;
                        w->send_errors++;
                        goto done;
                    }
                    off += (size_t)n;
                }
                w->packets_sent++;
                w->lines_sent += lines_per_packet;
            }
        }
    }
done:
    if (!udp) shutdown(fd, SHUT_WR);
    close(fd);
    free(packets);
    return NULL;
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--proto")) proto = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--lines-per-packet")) lines_per_packet = atoi(v);
        else if (!strcmp(k, "--series")) series = atoi(v);
        else if (!strcmp(k, "--shape")) shape = v;
        else if (!strcmp(k, "--connections")) connections = atoi(v);
        else if (!strcmp(k, "--total")) total_limit = atoll(v);
        else if (!strcmp(k, "--sequential")) sequential = atoi(v);
        else { fprintf(stderr, "unknown option %s\n", k); return 2; }
    }
    if (connections < 1 || lines_per_packet < 1 || lines_per_packet > 800 || series < 1) return 2;
    struct worker *workers = calloc((size_t)connections, sizeof *workers);
    pthread_t *threads = calloc((size_t)connections, sizeof *threads);
    double began = now();
    deadline = began + seconds;
    for (int i = 0; i < connections; i++) {
        workers[i].index = i;
        workers[i].target_rate = rate > 0 ? rate / connections : 0;
        workers[i].quota = total_limit > 0 ? total_limit / connections : 0;
        pthread_create(&threads[i], NULL, run_worker, &workers[i]);
    }
    long long lines = 0, packets = 0, errors = 0;
    for (int i = 0; i < connections; i++) {
        pthread_join(threads[i], NULL);
        lines += workers[i].lines_sent;
        packets += workers[i].packets_sent;
        errors += workers[i].send_errors;
    }
    double took = now() - began;
    printf("{\"lines\": %lld, \"packets\": %lld, \"errors\": %lld, \"seconds\": %.3f, \"rate\": %.0f}\n",
           lines, packets, errors, took, lines / took);
    return 0;
}
