#include "server/server.h"

int main(int argc, char **argv)
{
    return moat_server_main(argc, argv);
}
