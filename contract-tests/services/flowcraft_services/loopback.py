"""An LD_PRELOAD shim that turns "listen on all interfaces" into "listen on 127.0.0.1".

Some servers (DynamoDB Local) have no option for the bind address and listen on 0.0.0.0.
The shim wraps bind(2): an IPv4 wildcard address becomes 127.0.0.1, an IPv6 wildcard
becomes ::1. It is compiled once with the machine's C compiler into the cache.
"""

from __future__ import annotations

import hashlib
import shutil

from . import installers
from .errors import ServiceError
from .locks import file_lock
from .paths import cache_dir

_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in copy;
        memcpy(&copy, addr, sizeof copy);
        if (copy.sin_addr.s_addr == htonl(INADDR_ANY)) {
            copy.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 copy;
        memcpy(&copy, addr, sizeof copy);
        if (memcmp(&copy.sin6_addr, &in6addr_any, sizeof in6addr_any) == 0) {
            /* ::ffff:127.0.0.1 keeps IPv4 clients working on a dual-stack socket. */
            static const unsigned char mapped[16] =
                {0,0,0,0,0,0,0,0,0,0,0xff,0xff,127,0,0,1};
            memcpy(&copy.sin6_addr, mapped, sizeof mapped);
            return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
        }
    }
    return real_bind(fd, addr, len);
}
"""


def shim_path() -> str:
    """Compile the shim if needed and return the path of the shared object."""
    digest = hashlib.sha256(_SOURCE.encode()).hexdigest()[:10]
    target = cache_dir() / "shims" / f"loopback-bind-{digest}.so"
    if target.exists():
        return str(target)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ServiceError(
            "a C compiler (cc/gcc) is needed to keep this server on loopback; apt-get install gcc"
        )
    with file_lock("loopback-shim"):
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            source = target.with_suffix(".c")
            source.write_text(_SOURCE)
            tmp = target.with_suffix(".tmp.so")
            installers.run(
                [compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(source), "-ldl"],
                what="compiling the loopback bind shim",
            )
            tmp.replace(target)
    return str(target)
