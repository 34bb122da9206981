#!/bin/busybox sh
# /init of the ptwbench KVM initramfs (bench/kvm/boot.py): mount what KVM, the selftests and
# tracefs need, print the versions, run /job/run.sh, power off.  Every line meant for the host
# starts with "@R " (bench/kvm/parse.py).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
[ -e /dev/kvm ] || mknod /dev/kvm c 10 232
# THP for anon_thp slots (the library madvises them); 2 MiB pages for hugetlb slots
echo madvise > /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null
echo 32 > /proc/sys/vm/nr_hugepages 2>/dev/null
echo "@R kernel $(uname -r) $(cat /proc/version)"
dmesg | grep -q "Hardware dirty bit management" && echo "@R hafdbs yes"
dmesg | grep -o "[A-Za-z]* mode initialized successfully" | sed 's/^/@R kvm_mode /' 
if [ -e /sys/module/kvm/parameters/s1ptw_policy ]; then
    echo "@R policy_param yes"
else
    echo "@R policy_param no"
fi
[ -e /dev/kvm ] && echo "@R kvm yes" || echo "@R kvm no"
sh /job/run.sh
echo "@R job_done"
sync
poweroff -f
