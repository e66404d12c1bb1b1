/* A tiny prefork server for the shim tests, run with the shim preloaded.
 *
 * usage: prefork_helper ADDR PORT WORKERS [LIMIT_FDS_OF_WORKER_1]
 *
 * The master binds ADDR:PORT (IPv4), listens, forks WORKERS workers and waits for them. Each
 * worker prints "worker N PID" and serves HTTP/1.0 on the inherited listener with poll + accept:
 *   GET /hold     answers "held" and keeps the connection open (the client closes it later)
 *   GET /vfork    vforks a child that closes every held connection and the listener, then
 *                 execs /bin/true (as a subprocess on a libc without close_range does)
 *   GET /release  closes every held connection, answers "released"
 *   GET /fds      answers the worker's open descriptor numbers
 *   anything else answers "pid=PID"
 * With a 4th argument, worker 1 first lowers its descriptor limit and uses every descriptor up,
 * so that it can create no socket at all (and logs how many times its loop ran, every second).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int held[256];
static int nheld;

static void answer(int c, const char *body) {
    char buf[4096];
    int n = snprintf(buf, sizeof buf, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    (void)!write(c, buf, n);
}

static void serve(int lfd, int id, int starve) {
    char line[64];
    snprintf(line, sizeof line, "worker %d %d\n", id, (int)getpid());
    (void)!write(1, line, strlen(line));
    if (starve) {
        struct rlimit rl = {64, 64};
        setrlimit(RLIMIT_NOFILE, &rl);
        while (open("/dev/null", O_RDONLY) >= 0) {
        }
    }
    long loops = 0;
    time_t last = time(NULL);
    for (;;) {
        loops++;
        if (starve && time(NULL) != last) {
            last = time(NULL);
            snprintf(line, sizeof line, "loops %d %ld\n", (int)getpid(), loops);
            (void)!write(1, line, strlen(line));
        }
        struct pollfd p = {lfd, POLLIN, 0};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            continue;
        char req[2048];
        int got = 0;
        struct timeval tv = {2, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        while (got < (int)sizeof req - 1) {
            int r = read(c, req + got, sizeof req - 1 - got);
            if (r <= 0)
                break;
            got += r;
            req[got] = 0;
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[got] = 0;
        if (strncmp(req, "GET /hold", 9) == 0 && nheld < 256) {
            answer(c, "held\n");
            held[nheld++] = c;
            continue;
        }
        if (strncmp(req, "GET /vfork", 10) == 0) {
            pid_t child = vfork();
            if (child == 0) {
                for (int i = 0; i < nheld; i++)
                    close(held[i]);
                close(lfd);
                close(c);
                execl("/bin/true", "true", (char *)NULL);
                _exit(127);
            }
            int st;
            waitpid(child, &st, 0);
            answer(c, "vforked\n");
        } else if (strncmp(req, "GET /release", 12) == 0) {
            for (int i = 0; i < nheld; i++)
                close(held[i]);
            nheld = 0;
            answer(c, "released\n");
        } else if (strncmp(req, "GET /fds", 8) == 0) {
            char body[2048] = "";
            DIR *d = opendir("/proc/self/fd");
            struct dirent *e;
            while (d && (e = readdir(d)) != NULL) {
                if (e->d_name[0] == '.')
                    continue;
                strncat(body, e->d_name, sizeof body - strlen(body) - 2);
                strncat(body, " ", sizeof body - strlen(body) - 1);
            }
            if (d)
                closedir(d);
            strncat(body, "\n", sizeof body - strlen(body) - 1);
            answer(c, body);
        } else {
            char body[64];
            snprintf(body, sizeof body, "pid=%d\n", (int)getpid());
            answer(c, body);
        }
        close(c);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s ADDR PORT WORKERS [STARVE]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 128) != 0) {
        perror("bind/listen");
        return 1;
    }
    int workers = atoi(argv[3]);
    for (int i = 0; i < workers; i++) {
        if (fork() == 0) {
            serve(lfd, i, argc > 4 && i == 1);
            _exit(0);
        }
    }
    int st;
    while (wait(&st) > 0) {
    }
    return 0;
}
