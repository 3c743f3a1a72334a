module kubetune.io/tests/node/pause

go 1.26.8
