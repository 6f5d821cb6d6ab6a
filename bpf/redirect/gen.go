package redirect

//go:generate go tool bpf2go -cc clang -strip llvm-strip -target bpfel -type ct_key -type ct_value -type metrics_value -type flow_event datapath redirect.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
//go:generate go tool bpf2go -cc clang -strip llvm-strip -target bpfel sock sock.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
