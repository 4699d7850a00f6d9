// Package sshd is the slave: it renders a locked-down sshd_config, runs and
// supervises a dedicated OpenSSH sshd as the unprivileged tunnel user, answers
// sshd's AuthorizedKeysCommand (the `mas4h authkeys` hook and the daemon's unix
// socket behind it), finds live sessions in the process and socket tables and
// ends the ones a revoked device still holds.
package sshd
